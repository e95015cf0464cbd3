"""`python -m bench run [--quick] [--sizes 100,1000,5000] [--proxy nginx] ...`,
`python -m bench report FILE` and `python -m bench soak [--minutes 10]`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from bench import report
from bench.options import Options
from bench.run import ensure_cwd_importable, run, write_results


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the benchmark (takes minutes; see docs/benchmarks.md)")
    r.add_argument("--quick", action="store_true", help="small N and short phases, for development")
    r.add_argument("--sizes", type=_ints, help="stream counts, e.g. 100,1000,3000,5000")
    r.add_argument("--duration", type=float, help="seconds of writes per latency phase")
    r.add_argument("--rate", type=float, help="activity posts/s in the event phase (20)")
    r.add_argument("--page-rate", type=float, help="activity posts/s in the page phases (2)")
    r.add_argument(
        "--page-modes", type=_words, help="fragment fetch models: item,page,after (none: empty)"
    )
    r.add_argument("--hammer-rate", type=float, help="counter increments/s (1000)")
    r.add_argument("--hammer-seconds", type=float)
    r.add_argument(
        "--server",
        choices=["uvicorn", "granian", "both"],
        help="server for Ripple's stream instance (both: compare them)",
    )
    r.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    r.add_argument(
        "--proxy",
        choices=["none", "nginx"],
        default="none",
        help="nginx: instead of the usual blocks, one 2-worker instance direct against two "
        "1-worker instances behind nginx (sizes 100,1000,3000, item pages up to 3000)",
    )
    r.add_argument(
        "--proxy-lock-timeout",
        dest="proxy_lock_timeout_ms",
        type=int,
        help="nginx proxy_cache_lock_timeout in ms: what a cache-lock waiter waits (100)",
    )
    r.add_argument(
        "--peer",
        choices=["none", "node"],
        default="none",
        help="node: instead of the usual blocks, Ripple and the Node.js peer in turns "
        "(sizes 1000,10000,20000, page mode up to 1000, 5 posts/s)",
    )
    r.add_argument("--peer-rounds", type=int, help="turns per server at each N (2)")
    r.add_argument(
        "--peer-servers",
        type=_words,
        help="servers taking turns (ripple,node; ripple-gc-default: Ripple with CPython's GC)",
    )
    r.add_argument(
        "--profile", action="store_true", help="with --peer: profile each server's last turn"
    )
    r.add_argument("--fetch-group", type=int, help="clients sharing one fetch pool (1)")
    r.add_argument("--fetch-conns", type=int, help="keep-alive connections per pool (1)")
    r.add_argument(
        "--quiet-below",
        type=float,
        help="wait before each block until machine CPU is below this %% busy (40)",
    )
    r.add_argument("--quiet-wait", type=float, help="seconds to wait for that at most (180)")
    r.add_argument("--page-max", type=int, help="page phases only up to this many streams")
    r.add_argument("--admin-url", help="PostgreSQL URL allowed to CREATE DATABASE")
    r.add_argument(
        "--docs",
        choices=["auto", "yes", "no"],
        default="auto",
        help="rewrite docs/benchmarks.md's table and chart (auto: not with --quick)",
    )
    rep = sub.add_parser("report", help="rewrite docs from a results file")
    rep.add_argument("file", type=Path, nargs="+", help="peer runs (--peer) may be several")
    soak = sub.add_parser("soak", help="chaos soak with a checker (see docs/reliability.md)")
    soak.add_argument("--minutes", type=float, default=2.0, help="minutes of load and faults")
    soak.add_argument("--streams", type=int, default=500)
    soak.add_argument("--pages", type=int, default=3, choices=range(4), help="Chromium pages")
    soak.add_argument("--rate", type=float, default=20.0, help="posts per second")
    soak.add_argument("--seed", type=int, default=1, help="seeds the fault schedule")
    soak.add_argument("--no-faults", action="store_true", help="the same load, no faults")
    soak.add_argument("--faults", type=_words, help="only these fault kinds, e.g. listener_kill")
    args = parser.parse_args(argv)
    ensure_cwd_importable()

    if args.command == "soak":
        return _soak(args)

    if args.command == "report":
        runs = [(f.name, json.loads(f.read_text())) for f in args.file]
        if "peer" in runs[0][1]:
            from bench import fanin_report

            fanin_report.write_docs(*fanin_report.merge(runs))
        else:
            report.write_docs(runs[0][1], runs[0][0])
        return 0

    import os

    options = Options.quick_defaults() if args.quick else Options()
    if args.proxy != "none":
        from bench import nginx

        try:
            nginx.find_nginx()
        except nginx.ProxyMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        options.use_proxy(args.proxy)
    if args.peer != "none":
        options.use_peer(args.peer)
        options.profile = args.profile
    options.admin_url = (
        args.admin_url or os.environ.get("RIPPLE_BENCH_ADMIN_URL") or options.admin_url
    )
    for name in (
        "sizes", "duration", "rate", "page_rate", "page_modes", "hammer_rate",
        "hammer_seconds", "server", "fetch_group", "fetch_conns", "quiet_below",
        "quiet_wait", "page_max", "proxy_lock_timeout_ms", "peer_rounds", "peer_servers",
    ):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            setattr(options, name, value)
    options.baseline = not args.no_baseline
    # SIGTERM behaves like Ctrl-C: the run cancels, stops its servers and drops its database.
    # A shell starts background jobs with SIGINT ignored; put Python's handler back so that
    # asyncio installs its own and the raised SIGINT is not lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        results = run(options)
    except KeyboardInterrupt:
        print("interrupted: servers stopped, database dropped", file=sys.stderr)
        return 130
    path = write_results(results)
    print(f"results: {path.relative_to(Path.cwd())}")
    if options.peer:
        from bench import fanin_report

        print(fanin_report.summary(results))
        if args.docs == "yes" or (args.docs == "auto" and not options.quick):
            fanin_report.write_docs(results, path.name)
            print("docs/benchmarks.md updated (Against a Node.js peer)")
        return 0
    print(report.summary(results))
    if args.docs == "yes" or (args.docs == "auto" and not options.quick):
        report.write_docs(results, path.name)
        print("docs/benchmarks.md and docs/bench-latency.png updated")
    return 0


def _soak(args: argparse.Namespace) -> int:
    from bench import soak

    options = soak.SoakOptions(
        minutes=args.minutes, streams=args.streams, pages=args.pages, rate=args.rate,
        seed=args.seed, faults=not args.no_faults, fault_kinds=tuple(args.faults or ()),
    )  # fmt: skip
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        result = soak.run(options)
    except KeyboardInterrupt:
        print("interrupted: every process stopped", file=sys.stderr)
        return 130
    path, picture = soak.write(result, options)
    shown = f"results: {path.relative_to(Path.cwd())}"
    print(shown + (f", chart: {picture.name}" if picture else ""))
    print(soak.summary(result))
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
