"""The benchmark suite: smtpmux side by side with aiosmtpd and Postfix's smtp-sink, in one run.

    python benchmarks/suite.py                    # everything, 3 runs, a Markdown table
    python benchmarks/suite.py --quick            # a short smoke run
    python benchmarks/suite.py --servers smtpmux-asyncio,aiosmtpd-asyncio --workloads W1,W3
    python benchmarks/suite.py --json > result.json

Every server is a subprocess on 127.0.0.1 (a free port) pinned to one CPU; the load generator,
Postfix's ``smtp-source``, is pinned to the other (so is this process, which drives W5 itself).
Python servers run ``benchmarks/bench_server.py``: accept every message and discard it. The
``bare-*`` servers are the ceiling: the least a Python sink can do (split on CRLF, answer, find
the end of DATA; no checks) on asyncio, uvloop and threads. Compare smtpmux with them as ratios.

Workloads:
  W1  1 KiB messages over 10 parallel sessions kept open          messages/s
  W2  one 1 KiB message per session, 10 sessions in parallel      sessions/s
  W3  8 MiB messages on one session                               MiB/s of DATA
  W4  50 recipients per 1 KiB message, 10 sessions kept open      transactions/s
  W5  1000 idle connections after EHLO: server memory per connection (VmRSS before/after,
      KiB), then the time a fresh client needs for a whole transaction (ms)

Each measurement is sized to last about ``--duration`` seconds (from a warm-up run that also
warms the server). Runs alternate between servers, so drift hits every server alike; report
ratios from one run. Besides the wall-clock rate, the server's own CPU time per unit
(/proc/PID/stat) is recorded: it is what the server costs, and it is less sensitive to other
load on the machine than the rate.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
PYTHON_SERVERS = (
    "smtpmux-asyncio",
    "smtpmux-uvloop",
    "smtpmux-trio",
    "smtpmux-sync",
    "aiosmtpd-asyncio",
    "aiosmtpd-uvloop",
    "bare-asyncio",
    "bare-uvloop",
    "bare-threads",
)
SINK = "smtp-sink"
#: ``smtpmux serve --workers N --discard --quiet`` as a user runs it (only W1-W4; not pinned, so
#: the workers may use every CPU, the one smtp-source runs on included). Not run by default.
WORKER_SERVERS = {"smtpmux-cli-1-worker": 1, "smtpmux-cli-2-workers": 2}
#: ``smtpmux serve --discard`` as a user runs it, one process pinned like the others: default
#: logging (text, to stderr, which the suite keeps in a file), ``--quiet`` and JSON logging; on
#: uvloop when it is installed, as the command line does. Not run by default.
CLI_SERVERS = {
    "smtpmux-cli": (),
    "smtpmux-cli-quiet": ("--quiet",),
    "smtpmux-cli-json": ("--log-format", "json"),
}
DEFAULT_SERVERS = (*PYTHON_SERVERS, SINK)
SERVERS = (*DEFAULT_SERVERS, *WORKER_SERVERS, *CLI_SERVERS)
BASELINE = "aiosmtpd-asyncio"
WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
MIB = 1024 * 1024
SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkError(Exception):
    """One measurement failed (the server died, smtp-source gave up, a reply was wrong)."""


# --- what is measured --------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str  #: "W1" ... "W5-fresh"
    title: str
    unit: str  #: of the figure ("msg/s")
    per: str  #: what one unit of work is, for CPU time per unit ("msg")
    higher_is_better: bool = True


METRICS = {
    "W1": Metric("W1", "W1 1 KiB messages, 10 sessions kept open", "msg/s", "msg"),
    "W2": Metric("W2", "W2 one message per session, 10 in parallel", "sessions/s", "session"),
    "W3": Metric("W3", "W3 8 MiB messages, one session", "MiB/s", "MiB"),
    "W4": Metric("W4", "W4 50 recipients per message, 10 sessions", "tx/s", "tx"),
    "W5-mem": Metric(
        "W5-mem", "W5 memory per idle connection (lower is better)", "KiB/conn", "conn", False
    ),
    "W5-fresh": Metric(
        "W5-fresh", "W5 fresh client next to the idle ones (lower is better)", "ms", "", False
    ),
}
METRICS_OF = {
    "W1": ("W1",),
    "W2": ("W2",),
    "W3": ("W3",),
    "W4": ("W4",),
    "W5": ("W5-mem", "W5-fresh"),
}


@dataclass(frozen=True)
class SourceLoad:
    """One smtp-source workload: how to run it and how much work ``count`` messages are."""

    sessions: int
    length: int
    recipients: int
    keep_open: bool
    warmup: int  #: messages of the warm-up (and calibration) run
    minimum: int
    maximum: int
    units_per_message: float = 1.0  #: W3 counts MiB, not messages


SOURCE_LOADS = {
    "W1": SourceLoad(10, 1024, 1, True, warmup=500, minimum=100, maximum=400_000),
    "W2": SourceLoad(10, 1024, 1, False, warmup=300, minimum=50, maximum=100_000),
    "W3": SourceLoad(1, 8 * MIB, 1, True, warmup=1, minimum=2, maximum=200, units_per_message=8.0),
    "W4": SourceLoad(10, 1024, 50, True, warmup=50, minimum=20, maximum=50_000),
}


@dataclass
class Settings:
    servers: tuple[str, ...]
    workloads: tuple[str, ...]
    runs: int
    duration: float  #: seconds each measurement should last
    idle_connections: int
    server_cpu: int | None
    client_cpu: int | None
    smtp_source: str
    smtp_sink: str | None
    quick: bool = False  #: smaller warm-up runs


@dataclass
class Cell:
    """Every run of one metric on one server."""

    metric: str
    server: str
    values: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  #: server CPU per unit of work
    counts: list[int] = field(default_factory=list)  #: messages (or connections) per run
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


# --- processes ---------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _child_setup(cpu: int | None) -> Callable[[], None]:
    """Runs in each child before exec: pin it, and have it killed if this process dies."""

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


class Processes:
    """Every child this suite starts, so each one is stopped (by its PID) whatever happens."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: Sequence[str], *, cpu: int | None, stderr: TextIO | int | None = None
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            preexec_fn=_child_setup(cpu),  # the suite runs no threads: safe
            start_new_session=True,  # Ctrl-C reaches the suite only; it stops the children
        )
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in list(self._running):
            self.stop(process)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and its live children (the
    workers of ``--workers``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    seconds += _cpu_seconds(int(child))
    return seconds


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchmarkError(f"no VmRSS for process {pid}")


class RunningServer:
    """One server subprocess on a free port."""

    def __init__(
        self, name: str, settings: Settings, processes: Processes, extra: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.port = _free_port()
        self._processes = processes
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        cpu = settings.server_cpu
        if name in WORKER_SERVERS:
            args = [sys.executable, "-m", "smtp_anyio", "serve", "--discard", "--quiet"]
            args += ["--listen", f"{HOST}:{self.port}", "--workers", str(WORKER_SERVERS[name])]
            cpu = None
        elif name in CLI_SERVERS:
            args = [sys.executable, "-m", "smtp_anyio", "serve", "--discard", *CLI_SERVERS[name]]
            args += ["--listen", f"{HOST}:{self.port}"]
            # as bench_server.py: room for W5's 1000 idle connections, all from 127.0.0.1
            args += ["--max-connections", "10000", "--max-connections-per-client", "0"]
        elif name == SINK:
            assert settings.smtp_sink is not None
            args = [settings.smtp_sink, "-m", "4000"]
            if os.geteuid() == 0:
                args += ["-u", "root"]  # required as root; "root" keeps PR_SET_PDEATHSIG
            args += [f"{HOST}:{self.port}", "1024"]
        else:
            args = [sys.executable, str(HERE / "bench_server.py"), name, str(self.port), *extra]
        self.process = processes.start(args, cpu=cpu, stderr=self._log)
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as sock:
                    sock.settimeout(5)
                    if _read_reply(sock).startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        _read_reply(sock)
                        return
            except OSError:
                time.sleep(0.05)
        raise BenchmarkError(f"{self.name} did not start listening within {timeout:.0f} s")

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchmarkError(f"{self.name} exited with {code}: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0)
            return " | ".join(self._log.read().strip().splitlines()[-3:])
        return ""

    def stop(self) -> None:
        self._processes.stop(self.process)
        self._log.close()


# --- W1-W4: smtp-source ------------------------------------------------------------------------


def _source_args(settings: Settings, load: SourceLoad, port: int, count: int) -> list[str]:
    args = [settings.smtp_source, "-s", str(load.sessions), "-m", str(count)]
    args += ["-l", str(load.length), "-M", "localhost", "-f", SENDER, "-t", RECIPIENT]
    if load.recipients > 1:
        args += ["-r", str(load.recipients)]
    if load.keep_open:
        args.append("-d")
    return [*args, f"{HOST}:{port}"]


def run_source(
    settings: Settings, processes: Processes, server: RunningServer, load: SourceLoad, count: int
) -> tuple[float, float]:
    """Send ``count`` messages; return (units per second, server CPU µs per unit)."""
    server.check_alive()
    args = _source_args(settings, load, server.port, count)
    with tempfile.TemporaryFile(mode="w+") as errors:
        cpu_before = _cpu_seconds(server.pid)
        started = time.perf_counter()
        source = processes.start(args, cpu=settings.client_cpu, stderr=errors)
        try:
            code = source.wait(timeout=max(120.0, 20 * settings.duration))
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"smtp-source against {server.name} timed out") from None
        finally:
            processes.stop(source)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(server.pid) - cpu_before
        if code != 0:
            errors.seek(0)
            detail = errors.read().strip().splitlines()[-1:] or ["no message"]
            raise BenchmarkError(f"smtp-source against {server.name}: exit {code}: {detail[0]}")
    server.check_alive()
    units = count * load.units_per_message
    return units / elapsed, cpu / units * 1e6


def calibrate(settings: Settings, load: SourceLoad, rate_in_messages: float) -> int:
    count = round(rate_in_messages * settings.duration)
    count = max(load.minimum, load.sessions, min(load.maximum, count))
    return count


# --- W5: idle connections, by hand -------------------------------------------------------------


def _read_reply(sock: socket.socket) -> bytes:
    """One whole (possibly multi-line) reply."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchmarkError(f"connection closed after {data[-200:]!r}")
        data += chunk
        if data.endswith(b"\r\n"):
            last = data[:-2].rsplit(b"\r\n", 1)[-1]
            if len(last) < 4 or last[3:4] == b" ":
                return data


def _expect(sock: socket.socket, command: bytes | None, codes: tuple[bytes, ...]) -> None:
    if command is not None:
        sock.sendall(command)
    reply = _read_reply(sock)
    if not reply.startswith(codes):
        raise BenchmarkError(f"{command!r} got {reply[:200]!r}")


_MESSAGE = (
    f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: fresh client\r\n\r\n".encode()
    + (b"x" * 78 + b"\r\n") * 12  # about 1 KiB of body
    + b".\r\n"
)


def fresh_transaction(port: int) -> float:
    """Seconds for a new client's whole session: connect, EHLO, one message, QUIT."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=10) as sock:
        _expect(sock, None, (b"220",))
        _expect(sock, b"EHLO fresh.example\r\n", (b"250",))
        _expect(sock, f"MAIL FROM:<{SENDER}>\r\n".encode(), (b"250",))
        _expect(sock, f"RCPT TO:<{RECIPIENT}>\r\n".encode(), (b"250",))
        _expect(sock, b"DATA\r\n", (b"354",))
        _expect(sock, _MESSAGE, (b"250",))
        _expect(sock, b"QUIT\r\n", (b"221",))
    return time.perf_counter() - started


def run_idle(settings: Settings, server: RunningServer) -> tuple[float, float, float]:
    """(KiB of server memory per idle connection, ms for a fresh client, CPU µs per idle
    connection). Needs a freshly started server: memory freed earlier would be reused."""
    fresh_transaction(server.port)  # warm the server's code paths before the baseline
    time.sleep(0.3)
    before = _rss_kib(server.pid)
    cpu_before = _cpu_seconds(server.pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(settings.idle_connections):
            sock = socket.create_connection((HOST, server.port), timeout=10)
            idle.append(sock)
            _expect(sock, None, (b"220",))
            _expect(sock, b"EHLO idle.example\r\n", (b"250",))
        time.sleep(0.5)  # let the server settle
        server.check_alive()
        after = _rss_kib(server.pid)
        cpu = _cpu_seconds(server.pid) - cpu_before
        fresh = fresh_transaction(server.port)
    finally:
        for sock in idle:
            sock.close()
    n = settings.idle_connections
    return (after - before) / n, fresh * 1000, cpu / n * 1e6


# --- running the suite -------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rotated(items: Sequence[str], by: int) -> list[str]:
    by %= max(len(items), 1)
    return [*items[by:], *items[:by]]


def run_suite(settings: Settings, processes: Processes) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for workload in settings.workloads:
        for metric in METRICS_OF[workload]:
            for name in settings.servers:
                cells[metric, name] = Cell(metric, name)
        if workload == "W5":
            for name in WORKER_SERVERS:  # memory per connection: of every worker, not measured
                cells.pop(("W5-mem", name), None)
                cells.pop(("W5-fresh", name), None)
            _run_w5(settings, processes, cells)
        else:
            _run_source_workload(settings, processes, workload, cells)
    return cells


def _run_source_workload(
    settings: Settings, processes: Processes, workload: str, cells: dict[tuple[str, str], Cell]
) -> None:
    load = SOURCE_LOADS[workload]
    servers: dict[str, RunningServer] = {}
    counts: dict[str, int] = {}
    try:
        for name in settings.servers:
            try:
                server = servers[name] = RunningServer(name, settings, processes)
                warmup = max(load.warmup // 5, load.sessions) if settings.quick else load.warmup
                rate, _ = run_source(settings, processes, server, load, warmup)
                counts[name] = calibrate(settings, load, rate / load.units_per_message)
            except BenchmarkError as exc:
                cells[workload, name].errors.append(str(exc))
                _progress(f"{workload} {name}: {exc}")
        for run in range(settings.runs):
            for name in _rotated(settings.servers, run):
                if name not in counts:
                    continue
                cell = cells[workload, name]
                try:
                    rate, cpu = run_source(settings, processes, servers[name], load, counts[name])
                except BenchmarkError as exc:
                    cell.errors.append(str(exc))
                    _progress(f"{workload} {name} run {run + 1}: {exc}")
                    continue
                cell.values.append(rate)
                cell.cpu_us.append(cpu)
                cell.counts.append(counts[name])
                unit = METRICS[workload].unit
                _progress(f"{workload} run {run + 1} {name}: {rate:,.1f} {unit}, {cpu:,.1f} µs CPU")
    finally:
        for server in servers.values():
            server.stop()


def _run_w5(settings: Settings, processes: Processes, cells: dict[tuple[str, str], Cell]) -> None:
    for run in range(settings.runs):
        for name in _rotated(settings.servers, run):
            if name in WORKER_SERVERS:
                continue
            memory, fresh = cells["W5-mem", name], cells["W5-fresh", name]
            try:
                server = RunningServer(name, settings, processes)
            except BenchmarkError as exc:
                memory.errors.append(str(exc))
                _progress(f"W5 {name}: {exc}")
                continue
            try:
                kib, ms, cpu = run_idle(settings, server)
            except (BenchmarkError, OSError) as exc:
                memory.errors.append(f"{type(exc).__name__}: {exc}")
                _progress(f"W5 {name} run {run + 1}: {exc}")
                continue
            finally:
                server.stop()
            memory.values.append(kib)
            memory.cpu_us.append(cpu)
            memory.counts.append(settings.idle_connections)
            fresh.values.append(ms)
            _progress(f"W5 run {run + 1} {name}: {kib:.1f} KiB/conn, fresh client {ms:.1f} ms")


# --- reporting ---------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(settings: Settings) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    postfix = None
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [postconf, "-d", "mail_version"], capture_output=True, text=True, timeout=10
        ).stdout
        postfix = out.partition("=")[2].strip() or None
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "server_cpu": settings.server_cpu,
        "client_cpu": settings.client_cpu,
        "versions": {
            "smtpmux": _version("smtpmux"),
            "aiosmtpd": _version("aiosmtpd"),
            "anyio": _version("anyio"),
            "trio": _version("trio"),
            "uvloop": _version("uvloop"),
            "postfix": postfix,
        },
    }


def _ratio(cell: Cell, reference: Cell | None) -> float | None:
    if reference is None or cell.median is None or not reference.median:
        return None
    return cell.median / reference.median


def report(settings: Settings, cells: dict[tuple[str, str], Cell]) -> dict[str, Any]:
    results = []
    for (metric, _server), cell in cells.items():
        results.append(
            {
                **asdict(cell),
                "unit": METRICS[metric].unit,
                "higher_is_better": METRICS[metric].higher_is_better,
                "median": cell.median,
                "min": min(cell.values) if cell.values else None,
                "max": max(cell.values) if cell.values else None,
                "cpu_us_median": statistics.median(cell.cpu_us) if cell.cpu_us else None,
                "ratio_to_aiosmtpd": _ratio(cell, cells.get((metric, BASELINE))),
                "ratio_to_smtp_sink": _ratio(cell, cells.get((metric, SINK))),
            }
        )
    return {
        "machine": machine_info(settings),
        "settings": {
            "runs": settings.runs,
            "duration": settings.duration,
            "idle_connections": settings.idle_connections,
            "servers": list(settings.servers),
            "workloads": list(settings.workloads),
        },
        "results": results,
    }


def _figure(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def summary(data: dict[str, Any]) -> list[str]:
    """One row per server, one column per metric: the median and its ratio to aiosmtpd."""
    metrics = [m for m in METRICS if any(r["metric"] == m for r in data["results"])]
    servers = list(dict.fromkeys(r["server"] for r in data["results"]))
    cells = {(r["metric"], r["server"]): r for r in data["results"]}
    header = " | ".join(f"{m} {METRICS[m].unit}" for m in metrics)
    lines = [f"| server | {header} |", "| --- |" + " ---: |" * len(metrics)]
    for server in servers:
        row = []
        for metric in metrics:
            result = cells.get((metric, server))
            if result is None or result["median"] is None:
                row.append("failed" if result is not None else "")
                continue
            ratio = result["ratio_to_aiosmtpd"]
            shown = f" ({ratio:.2f}x)" if ratio is not None and server != BASELINE else ""
            row.append(f"{_figure(result['median'])}{shown}")
        lines.append(f"| {server} | {' | '.join(row)} |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    machine, settings = data["machine"], data["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    pinning = (
        f"servers on CPU {machine['server_cpu']}, smtp-source on CPU {machine['client_cpu']}"
        if machine["server_cpu"] is not None
        else "no CPU pinning (one CPU)"
    )
    lines = [
        f"{machine['cpus']} x {machine['cpu']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}; {versions}; {pinning}; median of {settings['runs']} "
        f"run(s), each about {settings['duration']:g} s; W5 with "
        f"{settings['idle_connections']} idle connections. In brackets: the ratio to "
        f"{BASELINE} (for W5, lower is better).",
        "",
        *summary(data),
        "",
        "| workload | server | median | min-max | vs aiosmtpd | vs smtp-sink | server CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for result in data["results"]:
        by_metric.setdefault(result["metric"], []).append(result)
    for metric, results in by_metric.items():
        info = METRICS[metric]
        for result in results:
            if result["median"] is None:
                error = (result["errors"] or ["not measured"])[-1]
                lines.append(f"| {info.title} | {result['server']} | failed: {error[:80]} |||||")
                continue
            spread = f"{_figure(result['min'])}-{_figure(result['max'])}"
            cpu = result["cpu_us_median"]
            cpu_text = "" if cpu is None or not info.per else f"{_figure(cpu)} µs/{info.per}"
            lines.append(
                f"| {info.title} | {result['server']} | {_figure(result['median'])} {info.unit} "
                f"| {spread} | {_times(result['ratio_to_aiosmtpd'])} "
                f"| {_times(result['ratio_to_smtp_sink'])} | {cpu_text} |"
            )
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------


def _names(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
        )
    return names


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/suite.py",
        description="smtpmux vs aiosmtpd vs Postfix smtp-sink, side by side",
    )
    parser.add_argument(
        "--servers",
        type=lambda t: _names(t, SERVERS, "server"),
        default=DEFAULT_SERVERS,
        help=f"comma-separated (default {','.join(DEFAULT_SERVERS)}; also "
        f"{','.join(WORKER_SERVERS)}: the command line with 1 and 2 worker processes; "
        f"{','.join(CLI_SERVERS)}: the command line with default, no and JSON logging)",
    )
    parser.add_argument(
        "--workloads",
        type=lambda t: _names(t, WORKLOADS, "workload"),
        default=WORKLOADS,
        help="comma-separated (default W1,W2,W3,W4,W5)",
    )
    parser.add_argument("--runs", type=_positive(int), help="runs per measurement (default 3)")
    parser.add_argument(
        "--duration", type=_positive(float), help="seconds per measurement (default 1.5)"
    )
    parser.add_argument(
        "--idle-connections", type=_positive(int), help="W5 idle connections (default 1000)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: 1 run, 0.2 s per measurement, 100 idle connections",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--table-from", metavar="FILE", help="only print the table of a saved --json result"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the servers")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU for the load generator")
    return parser


def _find(program: str) -> str | None:
    return shutil.which(program) or next(
        (
            str(path)
            for directory in ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/local/sbin")
            if (path := Path(directory) / program).is_file()
        ),
        None,
    )


def _available(servers: tuple[str, ...], sink: str | None) -> tuple[str, ...]:
    usable = []
    for name in servers:
        if name == SINK and sink is None:
            _progress("skipping smtp-sink: not found (Debian package postfix)")
        elif name.endswith("-uvloop") and _version("uvloop") is None:
            _progress(f"skipping {name}: uvloop is not installed (pip install -e '.[bench]')")
        elif name.startswith("aiosmtpd") and _version("aiosmtpd") is None:
            _progress(f"skipping {name}: aiosmtpd is not installed")
        elif name.endswith("-trio") and _version("trio") is None:
            _progress(f"skipping {name}: trio is not installed")
        else:
            usable.append(name)
    return tuple(usable)


def settings_from(args: argparse.Namespace) -> Settings:
    source = _find("smtp-source")
    if source is None:
        raise SystemExit("benchmarks: smtp-source not found (Debian package postfix)")
    sink = _find("smtp-sink")
    affinity = os.sched_getaffinity(0)
    pin = len(affinity) >= 2 and {args.server_cpu, args.client_cpu} <= affinity
    if not pin:
        _progress("not pinning: the servers and the load generator need two usable CPUs")
    quick = args.quick
    return Settings(
        servers=_available(args.servers, sink),
        workloads=args.workloads,
        runs=args.runs or (1 if quick else 3),
        duration=args.duration or (0.2 if quick else 1.5),
        idle_connections=args.idle_connections or (100 if quick else 1000),
        server_cpu=args.server_cpu if pin else None,
        client_cpu=args.client_cpu if pin else None,
        smtp_source=source,
        smtp_sink=sink,
        quick=quick,
    )


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every child is stopped on the way out."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _raise_fd_limit(needed: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        top = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table_from:
        print(markdown(json.loads(Path(args.table_from).read_text())))
        return 0
    settings = settings_from(args)
    if not settings.servers:
        _progress("no server to measure")
        return 1
    _raise_fd_limit(settings.idle_connections + 256)
    if settings.client_cpu is not None:
        os.sched_setaffinity(0, {settings.client_cpu})  # W5's client is this process
    processes = Processes()
    try:
        with _terminate_as_exit():
            cells = run_suite(settings, processes)
    except KeyboardInterrupt:
        _progress("interrupted")
        return 130
    finally:
        processes.stop_all()
    data = report(settings, cells)
    print(json.dumps(data, indent=2) if args.json else markdown(data))
    failed = any(cell.errors and not cell.values for cell in cells.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
