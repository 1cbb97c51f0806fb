"""Fixtures the live tests share: the server (and client) kind, a throwaway CA, a mailbox."""

from __future__ import annotations

import pytest

from .servers import KINDS, TLS, Collect


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """asyncio, trio or sync: the server's kind, and the client's where a test has one."""
    return str(request.param)


@pytest.fixture(scope="module")
def tls() -> TLS:
    return TLS()


@pytest.fixture
def box() -> Collect:
    return Collect()
