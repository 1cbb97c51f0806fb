"""smtp_core stays sans-IO: the standard library, attrs and idna; no sockets, TLS, loops or threads.

Two checks. Statically, every ``import`` in every smtp_core module (at any depth, so a lazy
import inside a function counts too) names the standard library, attrs, idna (IDNA 2008 and
UTS 46 tables: pure functions over strings) or smtp_core itself, and none of the stdlib modules
that do I/O, concurrency or read the clock. Dynamically, a fresh interpreter that imports
smtp_core loads no third-party module but attrs (whose code lives in the ``attr`` and ``attrs``
packages) and idna, and no networking or event-loop module at all.

``threading`` is only checked statically: ``logging``, which the Session uses for its
protocol trace, imports it, so any package that logs loads it; smtp_core never uses it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import idna
import pytest

import smtp_core

PACKAGE = Path(smtp_core.__file__).parent
SOURCES = sorted(PACKAGE.glob("*.py"))
ALLOWED = frozenset(sys.stdlib_module_names) | {"attrs", "idna", "smtp_core"}
# Standard library, but not for a sans-IO engine that is told the time and never waits.
IO_MODULES = frozenset(
    {
        "asyncio",
        "concurrent",
        "multiprocessing",
        "os",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "socketserver",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "_thread",
        "time",
    }
)
# Never loaded by ``import smtp_core``, not even through the standard library.
NEVER_LOADED = frozenset(
    {
        "_socket",
        "_ssl",
        "anyio",
        "asyncio",
        "concurrent",
        "multiprocessing",
        "select",
        "selectors",
        "smtp_anyio",
        "smtp_sync",
        "sniffio",
        "socket",
        "ssl",
        "subprocess",
        "trio",
    }
)


def imported_modules(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source``; relative ones are smtp_core."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_scan_sees_every_kind_of_import() -> None:
    source = "import a.b\nfrom c.d import e\nfrom . import f\ndef g():\n    import h\n"
    assert imported_modules(source) == {"a", "c", "h"}


@pytest.mark.parametrize("path", SOURCES, ids=[path.name for path in SOURCES])
def test_module_imports_only_stdlib_attrs_and_idna(path: Path) -> None:
    names = imported_modules(path.read_text(encoding="utf-8"))
    assert names - ALLOWED == set(), "third-party imports"
    assert names & IO_MODULES == set(), "I/O, concurrency or clock imports"


def test_every_module_is_scanned() -> None:
    assert {"__init__.py", "_server.py", "_state.py", "_data.py"} <= {p.name for p in SOURCES}


def test_importing_smtp_core_loads_no_io_module() -> None:
    """In a fresh interpreter without site (no .pth hooks importing things for us), with only
    the project, attrs and idna on the path: compare sys.modules before and after the import."""
    root = PACKAGE.parent
    attrs_home = Path(attrs.__file__).parent.parent
    idna_home = Path(idna.__file__).parent.parent
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import smtp_core\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(attrs_home), str(idna_home)])
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert "smtp_core._server" in loaded  # the import did happen, from this tree
    tops = {name.split(".")[0] for name in loaded}
    assert tops - frozenset(sys.stdlib_module_names) == {"attr", "attrs", "idna", "smtp_core"}
    assert tops & NEVER_LOADED == set()
