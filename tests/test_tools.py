"""tests/tools.py: a missing program skips a test on a developer's machine and fails it in CI."""

from __future__ import annotations

import pytest

from tests.tools import find, missing, require

MISSING = "smtpmux-no-such-tool"


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [
        (None, pytest.skip.Exception),
        ("", pytest.skip.Exception),
        ("false", pytest.skip.Exception),
        ("true", pytest.fail.Exception),
        ("TRUE", pytest.fail.Exception),
        ("1", pytest.fail.Exception),
    ],
)
def test_missing_tool_skips_or_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: type[BaseException]
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=MISSING):
        require(MISSING)
    with pytest.raises(outcome, match="this swaks has no TLS"):
        missing("this swaks has no TLS")


def test_present_tool_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert find(MISSING) is None
    assert require("sh").endswith("/sh")
