"""`pagefault-inspector`: investigate this node, probe its tracers, or serve the webhook receiver."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from app.config import Settings
from app.models import Cause


def _parser() -> argparse.ArgumentParser:
    from app.tracers.registry import CHOICES

    p = argparse.ArgumentParser(prog="pagefault-inspector", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("investigate", help="find which processes cause major page faults on this node now")
    inv.add_argument("--seconds", type=float, help="length of the window (default: PFI_INVESTIGATION_SECONDS or 30)")
    inv.add_argument("--tracer", choices=CHOICES, help="backend (default: PFI_TRACER or auto)")
    inv.add_argument("--top", type=int, help="how many processes to report (default 10)")
    inv.add_argument("--pid", type=int, action="append", dest="pids", metavar="PID",
                     help="only these processes (repeatable)")
    inv.add_argument("--format", choices=["text", "json"], default="text")
    probe = sub.add_parser("probe", help="which tracer backends work here, and why not")
    probe.add_argument("--format", choices=["text", "json"], default="text")
    sub.add_parser("serve", help="run the Alertmanager webhook receiver and the report pages")
    demo = sub.add_parser("demo", help="as root: fault a workload of its own at a 64 MiB memory limit, "
                          "investigate it, print the report, remove what it made")
    demo.add_argument("--seconds", type=float, help="length of the window (default 5)")
    return p


def _fail(message: str) -> None:
    sys.stderr.write(f"pagefault-inspector: {message}\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":  # serve configures its own logging, once (INFO, text or JSON)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:  # they name the bad variable; a bug gets its traceback
        _fail(f"bad setting: {exc}")
        return 2
    if args.command == "investigate":
        return _investigate(settings, args)
    if args.command == "probe":
        return _probe(settings, args.format)
    if args.command == "demo":
        from app.demo import main as demo

        return demo(settings, args.seconds)
    from app.service import logs
    from app.service.web.server import serve

    logs.configure(settings.web.log_format, logging.DEBUG if args.verbose else logging.INFO)
    serve(settings)
    return 0


def _investigate(settings: Settings, args: Any) -> int:
    from app.investigation.engine import investigate
    from app.render_text import render

    updates: dict[str, Any] = {}
    if args.tracer:
        updates["tracer"] = args.tracer
    if updates:
        settings = settings.updated(**updates)
    if args.seconds is not None and not 0 < args.seconds <= 600:
        _fail("--seconds must be in (0, 600]")
        return 2
    if args.top is not None and not 1 <= args.top <= 200:
        _fail("--top must be 1..200")
        return 2
    cancel = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        cancel.set()  # the engine stops its tracer and returns what it has

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    err = Console(stderr=True)
    try:
        if args.format == "text" and err.is_terminal:
            with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                          console=err, transient=True) as bar:
                task = bar.add_task("investigating", total=1.0)
                report = investigate(settings, seconds=args.seconds, pids=args.pids, top=args.top, cancel=cancel,
                                     progress=lambda f, m: bar.update(task, completed=f, description=m))
        else:
            report = investigate(settings, seconds=args.seconds, pids=args.pids, top=args.top, cancel=cancel)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    from app.investigation.report import CLI_LEAD_UP, build_report

    report = build_report(report, report_id=report.id, triggers=[], lead_up=CLI_LEAD_UP)
    if args.format == "json":
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        render(report, Console())
        if report.verdict.cause in (Cause.QUIET, Cause.NO_MAJOR_FAULTS):
            Console(stderr=True).print("[dim]nothing faults here: `pagefault-inspector demo` (as root) shows a "
                                       "finding on a workload of its own[/dim]")
    return 130 if report.status == "cancelled" else 0


def _probe(settings: Settings, fmt: str) -> int:
    import json

    from app.tracers.registry import probe

    rows = probe(settings)
    if fmt == "json":
        sys.stdout.write(json.dumps([{"backend": n, "available": ok, "reason": r} for n, ok, r in rows], indent=2) + "\n")
        return 0
    console = Console()
    for name, ok, reason in rows:
        mark = "[green]yes[/green]" if ok else "[red]no[/red] "
        console.print(f"{mark} {name:<16} {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
