"""``__all__`` is the public API, exactly: guarded for every package and public module.

As anyio's tests/test_all_attributes.py: each package's ``__all__`` is a tuple of names that
exist, and every public name the package holds (submodules aside) is listed in it, so nothing
becomes public by accident and nothing listed is missing. Public modules (no leading
underscore) list every class and function they define; private modules list only names they
have.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import traceback
import types

import pytest

PACKAGES = ("smtp_core", "smtp_anyio", "smtp_sync")


def submodules(package: str) -> list[str]:
    path = importlib.import_module(package).__path__
    return [
        name
        for _, name, _ in pkgutil.walk_packages(path, package + ".")
        if not name.endswith(".__main__")  # running it is its import
    ]


MODULES = [name for package in PACKAGES for name in submodules(package)]
PUBLIC_MODULES = [name for name in MODULES if "._" not in name]


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_is_exactly_its_public_names(package: str) -> None:
    module = importlib.import_module(package)
    exported = module.__all__
    assert isinstance(exported, tuple), "STYLE.md: __all__ is a tuple"
    assert len(set(exported)) == len(exported), "duplicates in __all__"
    assert [name for name in exported if not hasattr(module, name)] == []
    assert public_names(module) - set(exported) == set(), "public but not in __all__"
    assert set(exported) - public_names(module) == set(), "in __all__ but not a public name"


@pytest.mark.parametrize("package", PACKAGES)
def test_star_import_gives_exactly_all(package: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(importlib.import_module(package).__all__)


@pytest.mark.parametrize("name", MODULES)
def test_module_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert [item for item in exported if not hasattr(module, item)] == []


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_lists_what_it_defines(name: str) -> None:
    module = importlib.import_module(name)
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith(("_", "pytest_"))  # pytest hooks are found by name, not import
        and (inspect.isclass(value) or isinstance(value, types.FunctionType))
        and value.__module__ == name
    }
    assert defined - set(module.__all__) == set()


def test_the_guard_notices_an_unlisted_name() -> None:
    fake = types.ModuleType("fake")
    fake.__all__ = ("listed",)  # type: ignore[attr-defined]
    fake.listed = 1  # type: ignore[attr-defined]
    fake.leaked = 2  # type: ignore[attr-defined]
    fake.submodule = types.ModuleType("fake.submodule")  # type: ignore[attr-defined]
    assert public_names(fake) - set(fake.__all__) == {"leaked"}


#: the command line's own, caught in main() and printed as one line: never seen in a traceback
INTERNAL_EXCEPTIONS = {
    "smtp_anyio._cli.UsageError",
    "smtp_anyio._cli._BadArguments",
    "smtp_anyio._config_file.ConfigError",
}


@pytest.mark.parametrize("package", PACKAGES)
def test_public_classes_carry_their_public_module(package: str) -> None:
    """``smtp_core.SMTPConnectionError`` in a traceback, not ``smtp_core._client_session...``:
    the name a user can import is the name they read."""
    module = importlib.import_module(package)
    classes = [getattr(module, name) for name in module.__all__]
    wrong = {
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if inspect.isclass(cls) and cls.__module__ != package
    }
    assert wrong == set()


def test_every_exception_is_public() -> None:
    """Every exception class the packages define is importable from a public module, and says
    so; so a new one cannot show its private module in a traceback."""
    exported = {
        id(value)
        for name in [*PACKAGES, *PUBLIC_MODULES]
        for value in vars(importlib.import_module(name)).values()
    }
    hidden = {
        f"{value.__module__}.{value.__qualname__}"
        for name in MODULES
        for value in vars(importlib.import_module(name)).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__.startswith(PACKAGES)
        and (id(value) not in exported or "._" in value.__module__)
    }
    assert hidden == INTERNAL_EXCEPTIONS


def test_traceback_names_the_public_module() -> None:
    from smtp_core import SMTPConnectionError

    line = traceback.format_exception_only(SMTPConnectionError("gone"))
    assert line == ["smtp_core.SMTPConnectionError: gone\n"]


#: what moved from smtp_core's top level to smtp_core.adapter (docs/architecture.md, "Moved
#: names"): the Session's Actions, the client's steps, admission's answers, adapter helpers
MOVED_TO_ADAPTER = {
    *("Action", "Send", "Close", "Spool", "UpgradeToTLS", "Call", "HandlerCall"),
    *("Connect", "Authenticate", "CheckRecipient", "Deliver"),
    *("StepCall", "BeginStep", "StepRecipient", "AbortStep"),
    *("ClientBase", "ClientStep", "Steps", "Read", "Write", "WrapTLS", "address_literal"),
    *("Admitted", "Ticket", "TurnedAway", "describe_tls_failure"),
}
#: what smtp_core.adapter holds: the moved names and the transcript player's helpers
ADAPTER_NAMES = MOVED_TO_ADAPTER | {
    *("check_reply", "script_steps", "TranscriptReplies"),  # the transcript player's
    *("SessionFactory", "WaitEnd", "run_inline"),  # the lifecycle's, new
}


def test_the_adapter_module_holds_the_moved_names_and_the_player_helpers() -> None:
    import smtp_core
    import smtp_core.adapter

    assert set(smtp_core.adapter.__all__) == ADAPTER_NAMES
    assert MOVED_TO_ADAPTER.isdisjoint(smtp_core.__all__)


@pytest.mark.parametrize("name", sorted(MOVED_TO_ADAPTER))
def test_a_moved_name_still_imports_with_a_warning(name: str) -> None:
    """``from smtp_core import Send`` works for one more release, and says where to look."""
    import smtp_core
    import smtp_core.adapter

    namespace: dict[str, object] = {}
    with pytest.warns(DeprecationWarning, match=rf"smtp_core\.adapter\.{name}\b") as caught:
        exec(f"from smtp_core import {name}", namespace)
    assert namespace[name] is getattr(smtp_core.adapter, name)
    assert len(caught) == 1  # once per import, not once more for importlib's own look
    with pytest.warns(DeprecationWarning, match=rf"smtp_core\.{name} moved"):
        assert getattr(smtp_core, name) is getattr(smtp_core.adapter, name)


def test_a_missing_name_is_still_an_attribute_error() -> None:
    import smtp_core

    with pytest.raises(AttributeError, match="no_such_name"):
        smtp_core.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from smtp_core import check_reply", {})  # only ever in the adapter module


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("smtp_core.adapter", ADAPTER_NAMES),
        ("smtp_sync.adapter", {"SpoolFile", "call_arguments", "is_async_callable"}),
        ("smtp_sync.auth_file", {"AuthFilePolicy", "hash_password", "load_auth_file"}),
    ],
)
def test_a_shared_home_names_its_classes_as_imported(module: str, names: set[str]) -> None:
    """The public homes re-export from private modules; their classes say the public name."""
    loaded = importlib.import_module(module)
    assert names <= set(loaded.__all__)
    wrong = {
        name
        for name in loaded.__all__
        if inspect.isclass(value := getattr(loaded, name)) and value.__module__ != module
    }
    assert wrong == set()
