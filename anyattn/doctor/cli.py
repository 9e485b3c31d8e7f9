"""CLI for ``anyattn doctor | explain | plan``.

The main ``anyattn`` command (anyattn/cli.py) calls :func:`register` with its argparse
subparsers. Standalone: ``python -m anyattn.doctor.cli doctor|explain|plan ...``.

Exit codes: doctor 0 healthy / 1 problems found / 2 the doctor itself failed;
explain 0 recognised / 1 not recognised / 2 failed; plan 0 a compatible wheel or command /
1 nothing installs as planned / 2 failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import List, Optional


def _stderr_console():
    from rich.console import Console
    return Console(stderr=True)


def _load_or_collect(path: Optional[str], probe: bool, progress_console=None, timeout: float = 60.0):
    from . import facts as _facts
    if path:
        return _facts.Facts.load(path)
    if progress_console is not None and progress_console.is_terminal:
        with progress_console.status("anyattn doctor: reading the machine...") as st:
            return _facts.collect(probe=probe, timeout=timeout, progress=lambda s: st.update(f"anyattn doctor: {s}..."))
    return _facts.collect(probe=probe, timeout=timeout)


def cmd_doctor(args) -> int:
    try:
        from . import checks, recent, report
        recent.install()  # the selector's warnings during this run go into the bundle
        err = _stderr_console()
        f = _load_or_collect(args.facts, probe=not args.no_probe, progress_console=None if args.json else err,
                             timeout=args.timeout)
        if args.save_facts:
            with open(args.save_facts, "w", encoding="utf-8") as fh:
                fh.write(f.to_json())
        findings = checks.run_checks(f)
        code = checks.exit_code(findings)
        backends = report.backend_summary(f)
        if getattr(args, "bundle", None):
            from . import bundle
            bundle.write(args.bundle, f, findings, backends, recent.recent())
            err.print(f"bug-report bundle written to {args.bundle} (secrets and home paths redacted): attach it to the issue")
        if args.json:
            print(json.dumps(report.to_json_dict(f, findings, backends, code), indent=2, default=str))
        else:
            report.render(f, findings, backends)
            if args.save_facts:
                err.print(f"facts saved to {args.save_facts}")
        return code
    except Exception as e:  # noqa: BLE001 - exit 2 means the doctor itself failed
        sys.stderr.write(f"anyattn doctor failed: {type(e).__name__}: {e}\n")
        traceback.print_exc(file=sys.stderr)
        return 2


def cmd_explain(args) -> int:
    try:
        from . import explain, report
        if args.file in (None, "-"):
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        f = _load_or_collect(args.facts, probe=False)
        res = explain.explain_text(text, f)
        if args.json:
            print(json.dumps(res, indent=2, default=str))
        else:
            report.render_explain(res)
        return 0 if res["recognised"] else 1
    except Exception as e:  # noqa: BLE001
        sys.stderr.write(f"anyattn explain failed: {type(e).__name__}: {e}\n")
        traceback.print_exc(file=sys.stderr)
        return 2


def cmd_plan(args) -> int:
    try:
        from . import plan as _plan
        from . import report
        f = _load_or_collect(args.facts, probe=False)
        p = _plan.plan(args.package, facts=f, version=args.version, available_file=args.available,
                       torch=args.torch, cuda=args.cuda, python=args.python, cxx11_abi=args.cxx11_abi,
                       platform=args.platform, driver_cuda=args.driver_cuda, ccs=args.cc, glibc=args.glibc)
        if args.json:
            print(json.dumps(p, indent=2, default=str))
        else:
            report.render_plan(p)
        return 0 if (p.get("compatible") or p.get("command")) else 1
    except Exception as e:  # noqa: BLE001
        sys.stderr.write(f"anyattn plan failed: {type(e).__name__}: {e}\n")
        traceback.print_exc(file=sys.stderr)
        return 2


def register(subparsers) -> None:
    """Add ``doctor``, ``explain`` and ``plan`` to an argparse subparsers object."""
    d = subparsers.add_parser("doctor", help="read this machine and predict attention install/load failures",
                              description="Collect facts, run checks, report findings with fixes. "
                                          "Exit 0 healthy, 1 problems found, 2 the doctor failed.")
    d.add_argument("--json", action="store_true", help="machine-readable report")
    d.add_argument("--save-facts", metavar="FILE", help="write the collected facts (for a bug report)")
    d.add_argument("--facts", metavar="FILE", help="run the checks on facts saved on another machine")
    d.add_argument("--no-probe", action="store_true", help="skip the subprocess import probes (faster)")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds per import probe (default 60)")
    d.add_argument("--bundle", metavar="FILE",
                   help="also write a bug-report bundle (Markdown, or JSON if FILE ends in .json), secrets redacted")
    d.set_defaults(func=cmd_doctor)

    e = subparsers.add_parser("explain", help="recognise an error log and give the cause and the fix",
                              description="Read a pip/build/import/runtime log and explain it with this machine's facts.")
    e.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="log file, or - for stdin (default)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--facts", metavar="FILE", help="explain against saved facts instead of this machine")
    e.set_defaults(func=cmd_explain)

    p = subparsers.add_parser("plan", help="plan an install that works: flash-attn | flash-attn-4 | flashinfer | xformers",
                              description="The exact wheel (or a sized source build) for this machine or a target.")
    p.add_argument("package", choices=["flash-attn", "flash-attn-4", "flashinfer", "xformers"])
    p.add_argument("--version", metavar="V", help="package version (flash-attn default: latest known)")
    p.add_argument("--available", metavar="FILE", help="file of release asset names to pick from")
    p.add_argument("--json", action="store_true")
    p.add_argument("--facts", metavar="FILE", help="plan for the machine these saved facts describe")
    p.add_argument("--torch", metavar="VERSION", help="target torch version, e.g. 2.6.0")
    p.add_argument("--cuda", metavar="VERSION", help="target torch.version.cuda, e.g. 12.4")
    p.add_argument("--python", metavar="X.Y", help="target Python, e.g. 3.10")
    p.add_argument("--cxx11-abi", dest="cxx11_abi", choices=["TRUE", "FALSE", "true", "false"],
                   help="target torch C++ ABI")
    p.add_argument("--platform", metavar="TAG", help="target platform tag, e.g. linux_x86_64")
    p.add_argument("--driver-cuda", dest="driver_cuda", metavar="X.Y",
                   help="CUDA version the target's driver supports (nvidia-smi 'CUDA Version'), e.g. 12.4")
    p.add_argument("--cc", metavar="X.Y[,X.Y]", help="target GPU compute capabilities, e.g. 9.0 or 8.0,12.0")
    p.add_argument("--glibc", metavar="X.Y", help="target glibc version (manylinux tags), e.g. 2.35")
    p.set_defaults(func=cmd_plan)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="anyattn", description="anyattn doctor / explain / plan")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
