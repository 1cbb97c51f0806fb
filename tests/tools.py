"""The programs some tests drive (swaks, curl, Postfix's smtp-sink and smtp-source, HAProxy,
Dovecot): where they are, and what a test does when one is missing.

Missing on a developer's machine: the test is skipped with the package to install. Missing in CI
(``CI=true`` in the environment, as GitHub Actions and most CI services set it): the test fails,
so a broken install step cannot turn the interop tests into silent skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: tool -> the Debian package (and what else) it comes from; .ci/run installs them all
INSTALL = {
    "swaks": "apt-get install swaks",
    "curl": "apt-get install curl",
    "smtp-sink": "apt-get install postfix",
    "smtp-source": "apt-get install postfix",
    "haproxy": "apt-get install haproxy",
    "dovecot": "apt-get install dovecot-core dovecot-lmtpd",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find(name: str) -> str | None:
    """The executable ``name`` on PATH or where Debian puts it outside a user's PATH."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/lib/postfix/sbin/{name}"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing(what: str) -> None:
    """Skip the running test because ``what`` is missing; fail it in CI."""
    if in_ci():
        pytest.fail(f"{what}, and CI=true: the CI install step is broken", pytrace=False)
    pytest.skip(what)


def require(name: str) -> str:
    """The path of the tool ``name``; the test is skipped (or failed in CI) without it."""
    path = find(name)
    if path is None:
        missing(f"{name} is not installed ({INSTALL.get(name, 'see .ci/run')})")
        raise AssertionError("unreachable")  # pragma: no cover - skip and fail raise
    return path


def needs(*names: str) -> pytest.MarkDecorator:
    """A mark for tests that need these tools (conftest.py acts on it before each test)."""
    return pytest.mark.needs_tool(*names)
