"""Profile one server of the suite under one workload, with cProfile or py-spy.

    python benchmarks/profile_server.py smtpmux-asyncio W1           # cProfile, top 30 self time
    python benchmarks/profile_server.py smtpmux-asyncio W3 --py-spy  # sampling, by function
    python benchmarks/profile_server.py smtpmux-cli W1 --py-spy      # smtpmux serve as users run it

cProfile counts every call and so inflates call-heavy code; py-spy (``pip install py-spy``)
samples from outside the process (on the load generator's CPU) and shows where time really goes.
"""

from __future__ import annotations

import argparse
import collections
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__:
    from . import suite
else:  # python benchmarks/profile_server.py
    import suite


def _py_spy_leaves(raw: Path, top: int) -> str:
    """Self time per function from py-spy's collapsed stacks (``--format raw``)."""
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self%  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in leaves.most_common(top)]
    lines += ["", "incl%  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/profile_server.py", description=__doc__)
    parser.add_argument("server", choices=(*suite.PYTHON_SERVERS, *suite.CLI_SERVERS))
    parser.add_argument("workload", choices=sorted(suite.SOURCE_LOADS))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load (about)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--py-spy", action="store_true", help="sample with py-spy instead")
    parser.add_argument("--sort", default="tottime", help="pstats sort key (default tottime)")
    args = parser.parse_args(argv)
    if args.server in suite.CLI_SERVERS and not args.py_spy:
        parser.error(f"{args.server} runs the command line: profile it with --py-spy")

    source = suite._find("smtp-source")
    if source is None:
        raise SystemExit("smtp-source not found (Debian package postfix)")
    settings = suite.Settings(
        servers=(args.server,),
        workloads=(args.workload,),
        runs=1,
        duration=args.duration,
        idle_connections=0,
        server_cpu=0,
        client_cpu=1,
        smtp_source=source,
        smtp_sink=None,
    )
    load = suite.SOURCE_LOADS[args.workload]
    processes = suite.Processes()
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "server.prof"
        try:
            if args.py_spy:
                server = suite.RunningServer(args.server, settings, processes)
            else:
                server = suite.RunningServer(
                    args.server, settings, processes, extra=["--profile", str(stats_file)]
                )
            rate, _ = suite.run_source(settings, processes, server, load, load.warmup)
            count = suite.calibrate(settings, load, rate / load.units_per_message)
            spy = None
            if args.py_spy:
                py_spy = shutil.which("py-spy")
                if py_spy is None:
                    raise SystemExit("py-spy not found: pip install py-spy")
                raw = Path(tmp) / "spy.txt"
                spy = processes.start(
                    [
                        py_spy,
                        "record",
                        "--format",
                        "raw",
                        "-o",
                        str(raw),
                        "-r",
                        "500",
                        "--pid",
                        str(server.pid),
                        "--nonblocking",
                        "--function",
                    ],
                    cpu=settings.client_cpu,
                )
                time.sleep(1.0)
            rate, cpu = suite.run_source(settings, processes, server, load, count)
            print(f"{args.server} {args.workload}: {rate:,.1f} per s, {cpu:,.1f} µs CPU per unit")
            if spy is not None:
                spy.send_signal(2)  # py-spy writes its file on SIGINT
                spy.wait(30)
                print(_py_spy_leaves(raw, args.top))
            server.stop()
        finally:
            processes.stop_all()
        if not args.py_spy:
            for _ in range(50):
                if stats_file.exists():
                    break
                time.sleep(0.1)
            stats = pstats.Stats(str(stats_file), stream=sys.stdout)
            stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
