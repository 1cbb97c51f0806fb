"""Counters a server keeps across its sessions, and their Prometheus text rendering.

The Session counts (it sees every connection, reply, transaction and TLS outcome), so both
adapters report the same numbers without a line of counting of their own. An adapter that runs
sessions in several threads passes a lock; the default is none (one event loop).
"""

from __future__ import annotations

import contextlib
from collections import Counter

import attrs

__all__ = ["Metrics"]


@attrs.define(eq=False)
class Metrics:
    """What happened so far. Read the fields, or ``render_prometheus()`` for a scrape."""

    connections: int = 0  #: sessions started
    connections_open: int = 0  #: sessions not yet closed
    bytes_received: int = 0  #: octets read from clients (after TLS)
    transactions_accepted: int = 0  #: messages accepted (every handler took them)
    transactions_refused: int = 0  #: messages that ended with a 4xx/5xx after their content
    message_bytes: int = 0  #: content octets of accepted messages
    recipients_accepted: int = 0
    auth_successes: int = 0
    auth_failures: int = 0
    tls_handshakes: int = 0
    tls_failures: int = 0
    connections_refused_full: int = 0  #: 421 4.7.0: full, and no idle connection to evict
    connections_refused_per_client: int = 0  #: 421 4.7.0: max_connections_per_client
    connections_refused_rate: int = 0  #: 421 4.7.0: connection_rate_per_client
    connections_evicted: int = 0  #: 421 4.4.2: closed while idle to admit a newcomer
    rejects: Counter[int] = attrs.Factory(Counter)  #: every 4xx/5xx reply sent, by code
    lock: contextlib.AbstractContextManager[object] = attrs.field(
        factory=contextlib.nullcontext, repr=False
    )

    def add(self, **increments: int) -> None:
        """Add to several counters at once (under the lock)."""
        with self.lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)

    def reject(self, code: int) -> None:
        with self.lock:
            self.rejects[code] += 1

    def render_prometheus(self, prefix: str = "smtpmux") -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        with self.lock:
            values = attrs.asdict(self, filter=lambda a, _: a.name not in ("rejects", "lock"))
            rejects = sorted(self.rejects.items())
        lines: list[str] = []
        for name, value in values.items():
            kind = "gauge" if name == "connections_open" else "counter"
            metric = f"{prefix}_{name}" + ("" if kind == "gauge" else "_total")
            lines += [f"# TYPE {metric} {kind}", f"{metric} {value}"]
        lines.append(f"# TYPE {prefix}_rejects_total counter")
        lines += [f'{prefix}_rejects_total{{code="{code}"}} {n}' for code, n in rejects]
        return "\n".join(lines) + "\n"
