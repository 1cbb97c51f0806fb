"""Fixtures the live tests share: the server (and client) kind, a throwaway CA, a mailbox."""

from __future__ import annotations

import pytest

from tests.servers import KINDS, TLS, Collect
from tests.tools import require


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_tool(*names): the test drives these programs (see tests/tools.py)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        for name in mark.args:
            require(name)
