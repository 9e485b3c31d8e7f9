"""The ``anyattn`` command: backends, which, doctor, explain, plan, bench, tune.

Every subcommand prints rich tables for people and, with ``--json``, a stable JSON document
for programs (schemas in the README).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


def _console():
    from rich.console import Console

    return Console()


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def cmd_backends(args) -> int:
    from . import selector

    statuses = selector.backend_statuses(args.device)
    if args.json:
        _print_json({"device": args.device or _default_device(), "backends": [s.to_dict() for s in statuses]})
        return 0
    from rich.table import Table

    table = Table(title=f"anyattn backends on {args.device or _default_device()}")
    for col in ("backend", "installed", "version", "usable", "why not / what"):
        table.add_column(col)
    for s in statuses:
        usable = "[green]yes[/]" if s.usable else "[red]no[/]"
        why = "\n".join(s.reasons) if s.reasons else s.description
        table.add_row(s.name, "yes" if s.installed else "no", s.version or "-", usable, why)
    _console().print(table)
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_which(args) -> int:
    from . import selector

    bucket = None
    if args.seqlen is not None or args.batch is not None:  # a shape: a tune file may decide
        from .tune import bucket as _bucket

        sk = args.seqlen or 1
        sq = 1 if args.op == "paged" and args.seqlen_q is None else (args.seqlen_q or sk)
        bucket = _bucket(sq, sk, args.batch or 1)
    try:
        decision = selector.decide_for(
            op=args.op, dtype=args.dtype, head_dim=args.head_dim, head_dim_v=args.head_dim_v,
            causal=args.causal, gqa=args.gqa, window=args.window, softcap=args.softcap, alibi=args.alibi,
            sinks=args.sinks, lse=args.lse, grad=args.grad, block_size=args.block_size, device=args.device,
            backend=args.backend, bucket=bucket)
    except (ValueError, TypeError) as exc:
        print(f"anyattn which: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(decision.to_dict())
    else:
        _console().print(decision)
    return 0 if decision.chosen else 1


def cmd_verify(args) -> int:
    import torch

    from . import verify

    dtypes = [verify_dtype(d) for d in args.dtype] if args.dtype else None
    try:
        names = None
        if args.backend:
            from .selector import parse_preference

            names = list(parse_preference(args.backend))
        device = args.device or _default_device()
        torch.device(device)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"anyattn verify: {exc}", file=sys.stderr)
        return 2
    kw = dict(backends_=names, ops=args.op or None, dtypes=dtypes, families=args.family or None,
              budget_s=args.budget, quick=args.quick)
    if args.json:
        summary = verify.run(device, **kw)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = _console()
        with Progress(TextColumn("[bold]verify[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("", total=None)

            def progress(done, total, r):
                bar.update(task, total=total, completed=done,
                           description=f"{r.backend} {r.op} {r.dtype} {r.family}: {r.status}")

            summary = verify.run(device, progress=progress, **kw)
        _print_verify(console, summary, args.all)
    if args.json:
        _print_json(summary)
    return 1 if summary["counts"].get("fail") else 0


def verify_dtype(text):
    from .request import parse_dtype

    return parse_dtype(text)


def _print_verify(console, summary, show_all) -> None:
    from rich.table import Table

    m = summary["machine"]
    table = Table(title=f"anyattn verify on {summary['device']} ({m['device']}, torch {m['torch']}"
                        + (f", driver {m['driver']}" if m["driver"] else "") + ")",
                  caption=f"{summary['counts']} in {summary['wall_s']}s (CPU {summary['cpu_s']}s); "
                          f"cache: {summary['cache']}")
    for col in ("backend", "op", "dtype", "family", "status", "rel. error", "why"):
        table.add_column(col)
    styles = {"pass": "green", "fail": "bold red", "n/a": "dim", "skipped": "yellow"}
    for r in summary["results"]:
        if r["status"] == "n/a" and not show_all:
            continue
        err = r["error"]
        err_s = "-" if err is None else (err if isinstance(err, str) else f"{err:.1e}")
        table.add_row(r["backend"], r["op"], r["dtype"], r["family"],
                      f"[{styles.get(r['status'], '')}]{r['status']}[/]", err_s, r["reason"])
    console.print(table)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


_PLUGIN_COMMANDS = {"anyattn.doctor.cli": ("doctor", "explain", "plan"), "anyattn.bench": ("bench",),
                    "anyattn.tune": ("tune",)}


def _unavailable(exc) -> int:
    print(f"anyattn: this command is unavailable: {exc}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="anyattn", description="Fast attention that always installs, "
                                     "always runs, and says why.")
    parser.add_argument("--version", action="version", version=f"anyattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("backends", help="every backend: installed, version, usable here, why not")
    p.add_argument("--device", help="device to evaluate (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("which", help="the backend ranking for a described request on this machine")
    p.add_argument("--op", choices=["attention", "varlen", "paged"], default="attention")
    p.add_argument("--dtype", default="bf16", help="fp16, bf16 or fp32 (default bf16)")
    p.add_argument("--head-dim", type=_positive, default=128)
    p.add_argument("--head-dim-v", type=_positive, default=None, help="V head dim if it differs")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--gqa", type=_positive, default=1, help="query heads per KV head")
    p.add_argument("--window", type=int, default=None, help="sliding window size (left) in tokens")
    p.add_argument("--softcap", type=float, default=0.0)
    p.add_argument("--alibi", action="store_true")
    p.add_argument("--sinks", action="store_true")
    p.add_argument("--lse", action="store_true", help="the caller needs the log-sum-exp")
    p.add_argument("--grad", action="store_true", help="the caller needs a backward")
    p.add_argument("--block-size", type=_positive, default=None, help="paged KV block size (default 16)")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None, help="a forced name or comma-separated preference")
    p.add_argument("--seqlen", type=_positive, default=None,
                   help="keys per sequence (with --batch: lets an `anyattn tune` measurement decide)")
    p.add_argument("--seqlen-q", type=_positive, default=None, help="queries per sequence (default: --seqlen; paged: 1)")
    p.add_argument("--batch", type=_positive, default=None, help="sequences in the batch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_which)

    p = sub.add_parser("verify", help="check every usable backend on this machine against the reference")
    p.add_argument("--device", default=None, help="device to verify (default: cuda if available, else cpu)")
    p.add_argument("--backend", default=None, help="only these backends (comma-separated)")
    p.add_argument("--op", action="append", choices=["attention", "varlen", "paged"], help="only this op (repeatable)")
    p.add_argument("--dtype", action="append", help="only this dtype (repeatable: fp32, bf16, fp16)")
    p.add_argument("--family", action="append", choices=["plain", "causal", "window", "softcap", "alibi", "sinks",
                                                          "lse", "gqa"], help="only this feature family (repeatable)")
    p.add_argument("--budget", type=float, default=300.0, help="stop starting new checks after this many seconds")
    p.add_argument("--quick", action="store_true", help="one shape per cell (faster, less thorough)")
    p.add_argument("--all", action="store_true", help="also list the cells a backend does not serve")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    # Subcommands that live in their own packages register themselves.
    for module, commands in _PLUGIN_COMMANDS.items():
        try:
            importlib.import_module(module).register(sub)
        except ImportError as exc:  # a missing optional part must not take the CLI down
            for name in commands:
                p = sub.add_parser(name, help=f"(unavailable: {exc})")
                p.set_defaults(func=lambda a, e=exc: _unavailable(e))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `anyattn ... | head`: the reader left; that is not an error
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
