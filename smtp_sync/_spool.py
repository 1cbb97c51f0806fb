"""Large-message spooling for both adapters: the file behind the Session's Spool actions."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from typing import BinaryIO

import attrs

from smtp_core import Call, Deliver, Spool

__all__ = ["SpoolFile", "call_arguments", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SpoolFile:
    """The current transaction's spool file, created when the Session first spools."""

    def __init__(self) -> None:
        self.file: BinaryIO | None = None

    def write(self, action: Spool) -> None:
        if action.start or self.file is None:
            self.close()
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - lives across actions
        self.file.write(action.data)

    def rewound(self) -> BinaryIO:
        assert self.file is not None, "a spooled delivery without a spool file"
        self.file.flush()
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def call_arguments(action: Call, spool: SpoolFile) -> tuple[object, ...]:
    """The arguments to call ``action.function`` with: a spooled envelope gets its file."""
    if isinstance(action, Deliver) and action.spooled:
        return (attrs.evolve(action.envelope, content=spool.rewound()),)
    return action.args
