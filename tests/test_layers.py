"""The layers, guarded: smtp_core <- smtp_sync <- smtp_anyio (docs/architecture.md).

Every ``import`` in every module of the three packages, at any depth (a lazy import inside a
function counts too), is read with ``ast`` and checked against two rules:

- direction: smtp_core imports neither adapter, smtp_sync never imports smtp_anyio;
- privacy: a package imports another package only through its public modules; a module whose
  name starts with ``_`` (``smtp_sync._spool``, ``smtp_core._transcript``) is its own
  package's business. What two packages share gets a public home (``smtp_core.adapter``,
  ``smtp_sync.adapter``, ``smtp_sync.auth_file``).

The tests import private modules freely: they are not a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("smtp_core", "smtp_sync", "smtp_anyio")  # each may import those before it only
LOWER = {package: set(PACKAGES[:index]) for index, package in enumerate(PACKAGES)}


def imports(source: str, package: str) -> set[str]:
    """The absolute module names ``source`` imports, ``from X import y`` as ``X.y`` too (y may
    be a module); relative imports stay inside ``package`` and are left out."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(source: str, package: str) -> list[str]:
    """What breaks the rules in one module of ``package``, in words."""
    problems = []
    for name in sorted(imports(source, package)):
        parts = name.split(".")
        target = parts[0]
        if target not in PACKAGES or target == package:
            continue
        if target not in LOWER[package]:
            problems.append(f"{name}: {package} may not import {target} (a higher layer)")
        elif any(part.startswith("_") for part in parts[1:]):
            problems.append(f"{name}: private to {target}; give it a public home")
    return problems


SOURCES = [
    pytest.param(path, id=str(path.relative_to(ROOT)))
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
]


@pytest.mark.parametrize("path", SOURCES)
def test_imports_follow_the_layers(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    assert violations(path.read_text(encoding="utf-8"), package) == []


@pytest.mark.parametrize(
    ("package", "source", "problem"),
    [
        ("smtp_core", "import smtp_sync", "smtp_core may not import smtp_sync"),
        ("smtp_core", "def f():\n    from smtp_anyio import serve", "may not import smtp_anyio"),
        ("smtp_sync", "from smtp_anyio._server import Server", "may not import smtp_anyio"),
        ("smtp_anyio", "from smtp_sync._spool import SpoolFile", "private to smtp_sync"),
        ("smtp_anyio", "import smtp_core._transcript", "private to smtp_core"),
        ("smtp_sync", "from smtp_core import _session", "private to smtp_core"),
    ],
    ids=[
        "core-imports-sync",
        "lazy-import",
        "sync-imports-anyio",
        "private-from",
        "private-import",
        "private-submodule",
    ],
)
def test_the_guard_notices(package: str, source: str, problem: str) -> None:
    assert any(problem in line for line in violations(source, package))


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("smtp_anyio", "from smtp_sync.adapter import SpoolFile"),
        ("smtp_anyio", "from smtp_core.adapter import Send"),
        ("smtp_sync", "from ._spool import SpoolFile"),  # its own private module
        ("smtp_sync", "from smtp_sync._step import fan_out"),
        ("smtp_core", "import attrs"),
    ],
    ids=["public-sync", "public-core", "relative", "own-private", "third-party"],
)
def test_the_guard_allows(package: str, source: str) -> None:
    assert violations(source, package) == []
