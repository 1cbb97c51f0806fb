"""Failed logins per client address, across connections: password guessing slowed server-wide.

The Session's per-connection limit (``Policy.max_auth_failures``) only makes a guesser
reconnect; this table remembers an address's failures for ``window`` seconds, and once there
are ``max_failures`` of them the Session refuses that address's AUTH with 421 4.7.0 before any
hash is computed, until the address has been quiet for ``window`` seconds. Mail without AUTH
from the address is unaffected. Pure: the Session passes the time in; the table holds at most
``max_addresses`` entries, dropping the one that failed least recently, so a flood of
addresses costs bounded memory.
"""

from __future__ import annotations

import contextlib

import attrs

__all__ = ["AuthLockout"]


@attrs.define(eq=False)
class AuthLockout:
    """Shared by every session of a server (put it on the Policy). A server that runs sessions
    in threads passes a lock, as for Metrics."""

    max_failures: int = 10  #: failures from one address before its AUTH is refused
    window: float = 600.0  #: seconds of quiet after which an address's count is forgotten
    max_addresses: int = 10_000  #: addresses remembered at most
    lock: contextlib.AbstractContextManager[object] = attrs.field(
        factory=contextlib.nullcontext, repr=False
    )
    #: address -> (failures, time of the last one); ordered by the last failure, oldest first
    _failures: dict[str, tuple[int, float]] = attrs.field(factory=dict, init=False, repr=False)

    def locked(self, address: str, now: float) -> bool:
        """Is ``address`` over the limit at ``now`` (seconds, any fixed origin)?"""
        with self.lock:
            entry = self._failures.get(address)
            if entry is None:
                return False
            if now - entry[1] >= self.window:
                self._failures.pop(address, None)
                return False
            return entry[0] >= self.max_failures

    def failed(self, address: str, now: float) -> None:
        """Count one failed (or refused) login from ``address`` at ``now``."""
        with self.lock:
            count, last = self._failures.pop(address, (0, now))
            if now - last >= self.window:
                count = 0
            self._failures[address] = (count + 1, now)
            while len(self._failures) > self.max_addresses:
                self._failures.pop(next(iter(self._failures)), None)

    def __len__(self) -> int:
        return len(self._failures)
