"""Rendering: the human report (rich) and the JSON report; the backend summary.

The backend summary asks anyattn's selector (``anyattn.selector.backend_statuses`` /
``decide_for``) when the facts are this machine's; for recorded facts (or when the selector
is not available) it estimates from the facts and says so.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

REQUEST = {"op": "attention", "dtype": "bfloat16", "head_dim": 128, "causal": True}


def _probe_ok(p: Optional[dict]) -> bool:
    if not p or not p.get("installed"):
        return False
    pr = p.get("probe")
    return pr is None or bool(pr.get("ok"))


def estimate_backends(facts) -> Dict[str, Any]:
    """Which backends would run, judged from facts alone (no imports, no selector)."""
    t = facts.torch or {}
    ccs = facts.capabilities
    gpu = bool(t.get("cuda_available")) or (bool(facts.gpus) and bool(t.get("cuda")) and not facts.live)
    best = max(ccs) if ccs else 0.0
    rows: List[Dict[str, Any]] = []

    def row(name, usable, why):
        rows.append({"name": name, "usable": bool(usable), "reasons": [why] if why else []})

    pk = facts.packages or {}
    fa4 = pk.get("flash-attn-4")
    fa4_gpu = any(8.0 <= c < 13.0 for c in ccs)
    row("flash_attn_4", gpu and _probe_ok(fa4) and fa4_gpu,
        "not installed" if not (fa4 or {}).get("installed") else
        "import fails" if not _probe_ok(fa4) else "needs an sm80..sm12x GPU" if not fa4_gpu else None)
    fa3 = pk.get("flash-attn-3")
    row("flash_attn_3", gpu and _probe_ok(fa3) and 9.0 <= best < 10.0,
        "not installed" if not (fa3 or {}).get("installed") else
        "import fails" if not _probe_ok(fa3) else "needs a Hopper (sm90) GPU" if not (9.0 <= best < 10.0) else None)
    fa = pk.get("flash-attn")
    row("flash_attn", gpu and _probe_ok(fa) and best >= 8.0,
        "not installed" if not (fa or {}).get("installed") else
        "import fails" if not _probe_ok(fa) else "needs an sm80+ GPU" if best < 8.0 else None)
    fi = pk.get("flashinfer-python")
    tk = facts.toolkit or {}
    prebuilt = any((pk.get(n) or {}).get("installed") for n in ("flashinfer-cubin", "flashinfer-jit-cache"))
    jit_ok = bool(tk.get("nvcc")) and bool((tk.get("headers") or {}).get("cuda_fp8.h"))
    from packaging.version import InvalidVersion, Version
    try:
        sm12_old_cuda = 12.0 <= best < 13.0 and bool(t.get("cuda")) and Version(t["cuda"]) < Version("12.9")
    except InvalidVersion:
        sm12_old_cuda = False
    row("flashinfer", gpu and _probe_ok(fi) and best >= 7.5 and (prebuilt or jit_ok) and not sm12_old_cuda,
        "not installed" if not (fi or {}).get("installed") else
        "import fails" if not _probe_ok(fi) else "needs an sm75+ GPU" if best < 7.5 else
        "SM 12.x needs CUDA >= 12.9" if sm12_old_cuda else
        "no prebuilt kernels and no nvcc + cuda_fp8.h for its JIT" if not (prebuilt or jit_ok) else None)
    xf = pk.get("xformers")
    xcpp = ((xf or {}).get("probe") or {}).get("details", {}).get("has_cpp")
    row("xformers", gpu and _probe_ok(xf) and xcpp is not False,
        "not installed" if not (xf or {}).get("installed") else
        "import fails" if not _probe_ok(xf) else "C++/CUDA ops not loaded (built for another torch)" if xcpp is False
        else None)
    kp = (facts.triton or {}).get("kernel_probe")
    row("triton", gpu and (facts.triton or {}).get("installed") and (kp is None or kp.get("ok")),
        "not installed" if not (facts.triton or {}).get("installed") else "no GPU" if not gpu else
        "kernel probe failed" if kp and not kp.get("ok") else None)
    dev = "cuda" if gpu else ("mps" if t.get("mps_available") else "cpu")
    row("sdpa", bool(t.get("version")), None if t.get("version") else "torch missing")
    if rows[-1]["usable"]:
        rows[-1]["reasons"] = [f"PyTorch scaled_dot_product_attention on {dev}"]
    chosen = None
    for r in rows:  # preference for a bf16 / head_dim 128 / causal request
        if r["usable"] and r["name"] != "triton":
            chosen = r["name"]
            break
    return {"source": "facts", "statuses": rows, "usable": [r["name"] for r in rows if r["usable"]],
            "chosen": chosen, "request": REQUEST}


def backend_summary(facts, allow_selector: bool = True) -> Dict[str, Any]:
    if allow_selector and getattr(facts, "live", False):
        try:
            from anyattn import selector  # lazy: lands with the core issue
            st = selector.backend_statuses()
            statuses = [{"name": s.name, "installed": bool(getattr(s, "installed", True)),
                         "version": getattr(s, "version", None), "usable": bool(s.usable),
                         "reasons": list(getattr(s, "reasons", []) or [])} for s in st]
            dec = selector.decide_for(**REQUEST)
            cands = [{"name": c.name, "status": str(getattr(c, "status", "")),
                      "reasons": list(getattr(c, "reasons", []) or [])} for c in (getattr(dec, "candidates", None) or [])]
            return {"source": "selector", "statuses": statuses, "usable": [s["name"] for s in statuses if s["usable"]],
                    "chosen": dec.chosen, "candidates": cands, "request": REQUEST}
        except Exception as e:  # noqa: BLE001 - selector missing or failing must not break the doctor
            d = estimate_backends(facts)
            d["note"] = f"anyattn.selector unavailable ({type(e).__name__}: {e}); estimated from facts"
            return d
    d = estimate_backends(facts)
    d["note"] = ("recorded facts from another machine: not evaluated by the selector, estimated from facts"
                 if not getattr(facts, "live", False) else "estimated from this machine's facts")
    return d


def summary_lines(facts) -> List[List[str]]:
    t = facts.torch or {}
    tk = facts.toolkit or {}
    os_ = facts.os or {}
    rows = [
        ["OS", f"{os_.get('platform', '?')}" + (" (WSL)" if os_.get("wsl") else "")],
        ["Python", f"{(facts.python or {}).get('version', '?')} ({(facts.python or {}).get('executable', '?')})"],
        ["torch", (f"{t.get('version')}  CUDA {t.get('cuda') or '-'}  cxx11abi {str(t.get('cxx11_abi')).upper()}  "
                   f"cuda_available {t.get('cuda_available')}") if t.get("version") else (t.get("error") or "not installed")],
    ]
    if facts.gpus:
        for g in facts.gpus:
            rows.append([f"GPU {g.get('index')}", f"{g.get('name')}  sm{str(g.get('cc') or '?').replace('.', '')}  "
                         f"{(g.get('memory_mb') or 0) // 1024} GiB  {g.get('pci_bus_id') or ''}"])
    else:
        rows.append(["GPU", f"none ({facts.how.get('gpus', '')})"])
    if (facts.driver or {}).get("version"):
        rows.append(["driver", f"{facts.driver.get('version')} (CUDA {facts.driver.get('cuda') or '?'})"])
    rows.append(["toolkit", (f"CUDA_HOME={tk.get('cuda_home')} [{tk.get('found_by')}]  nvcc {tk.get('nvcc_version') or 'none'}"
                             if tk.get("cuda_home") else "none found")])
    mem = facts.memory or {}
    rows.append(["RAM / CPUs", f"{mem.get('available_gb', '?')} of {mem.get('total_gb', '?')} GB available"
                 + (f" (cgroup limit {mem['cgroup_limit_gb']} GB)" if mem.get("cgroup_limit_gb") else "")
                 + f" / {facts.cpu_count} CPUs"])
    inst = []
    for n, p in (facts.packages or {}).items():
        if p.get("installed"):
            pr = p.get("probe") or {}
            state = "" if not pr else (" ok" if pr.get("ok") else " BROKEN")
            if pr and pr.get("ok") and (pr.get("details") or {}).get("has_cpp") is False:
                state = " imports, C++ ops NOT loaded"
            inst.append(f"{n} {p.get('version')}{state}")
    rows.append(["packages", ", ".join(inst) or "no attention packages installed"])
    return rows


def to_json_dict(facts, findings, backends, code: int) -> Dict[str, Any]:
    return {"schema": 1, "exit_code": code, "healthy": code == 0, "machine": facts.machine or None,
            "live": bool(facts.live), "summary": {k: v for k, v in summary_lines(facts)},
            "findings": [x.to_dict() for x in findings], "backends": backends,
            "notes": list(facts.notes or [])}


_SEV_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def render(facts, findings, backends, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    con = console or Console()
    title = "anyattn doctor" + ("" if facts.live else f" (recorded facts{': ' + facts.machine if facts.machine else ''})")
    tab = Table(show_header=False, box=None, pad_edge=False)
    tab.add_column(style="bold")
    tab.add_column()
    for k, v in summary_lines(facts):
        tab.add_row(k, escape(str(v)))
    con.print(Panel(tab, title=title, expand=False))
    n = {s: sum(1 for x in findings if x.severity == s) for s in ("error", "warning", "info")}
    con.print(Text(f"Findings: {n['error']} error(s), {n['warning']} warning(s), {n['info']} info", style="bold"))
    for x in findings:
        head = Text()
        head.append(f"[{x.severity.upper()}] ", style=_SEV_STYLE.get(x.severity, ""))
        head.append(f"{x.id}", style="bold")
        if x.subject:
            head.append(f" ({x.subject})")
        head.append(f": {x.title}")
        con.print(head)
        if x.why:
            con.print(Text("    why: " + x.why, style="dim"))
        ev = ", ".join(f"{k}={v}" for k, v in x.evidence.items() if v not in (None, [], {}, ""))
        if ev:
            con.print(Text("    evidence: " + (ev if len(ev) < 500 else ev[:500] + "..."), style="dim"))
        if x.fix:
            con.print(Text("    fix:", style="green"))
            for line in x.fix:
                con.print(Text("      " + line, style="green" if not line.startswith("#") else "dim green"),
                          soft_wrap=True)
    con.print()
    con.print(Text("Attention backends here (request: bf16, head_dim 128, causal)", style="bold"))
    for s in backends.get("statuses", []):
        mark = "usable " if s.get("usable") else "no     "
        why = "; ".join(s.get("reasons") or [])
        con.print(Text(f"  {mark} {s['name']}" + (f"  - {why}" if why else ""),
                       style="green" if s.get("usable") else "dim"))
    chosen = backends.get("chosen")
    con.print(Text(f"anyattn picks: {chosen or 'nothing usable'}", style="bold green" if chosen else "bold red"))
    if backends.get("note"):
        con.print(Text(f"  ({backends['note']})", style="dim"))
    for note in facts.notes or []:
        con.print(Text(f"note: {note}", style="dim"))


def render_explain(result: Dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.text import Text
    con = console or Console()
    if not result["recognised"]:
        con.print(Text(result["message"], style="yellow"))
        return
    render_runs_here(result.get("runs_here") or [], con)
    for i, m in enumerate(result["matches"]):
        label = "most specific cause" if i == 0 else "also matches"
        label = "most specific cause" if i == 0 else f"cause {i + 1}"
        con.print(Text(f"[{label}] {m['id']}: {m['title']}", style="bold red" if i == 0 else "bold"))
        ln = m["evidence"].get("line_no")
        con.print(Text(f"  matched{f' (line {ln})' if ln else ''}: " + m["evidence"]["line"]
                       + ("  [re-ranked with this machine's facts]" if m["evidence"].get("from_facts") else ""),
                       style="dim"))
        if m["evidence"]["extracted"]:
            con.print(Text("  specifics: " + ", ".join(f"{k}={v}" for k, v in m["evidence"]["extracted"].items()),
                           style="dim"))
        con.print(Text("  cause: " + m["cause"]))
        con.print(Text("  fix:", style="green"))
        for line in m["fix"]:
            con.print(Text("    " + line, style="green" if not line.startswith("#") else "dim green"), soft_wrap=True)


def render_runs_here(runs: List[Dict[str, Any]], con) -> None:
    """"Nothing to build": what already runs on this machine, printed before any build recipe."""
    from rich.text import Text
    if not runs:
        return
    con.print(Text("Already runs here, nothing to build:", style="bold green"))
    for r in runs:
        con.print(Text(f"  {r['name']}: {r['what']}" + (f" -- {r['speed']}" if r.get("speed") else ""), style="green"),
                  soft_wrap=True)
        con.print(Text(f"      {r['how']}", style="dim green"), soft_wrap=True)
    con.print()


def render_plan(p: Dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.text import Text
    con = console or Console()
    render_runs_here(p.get("runs_here") or [], con)
    t = p.get("target", {})
    con.print(Text(f"plan {p['package']}" + (f" {p['version']}" if p.get("version") else "") +
                   f" for torch {t.get('torch')} CUDA {t.get('cuda')} Python {t.get('python')} "
                   f"cxx11abi {str(t.get('cxx11_abi')).upper()} {t.get('platform')}", style="bold"))
    if p.get("wheel"):
        con.print(Text(f"  wheel: {p['wheel']}"))
        con.print(Text(f"  installs on the target: {'yes' if p.get('compatible') else 'no'}",
                       style="green" if p.get("compatible") else "red"))
    for r in p.get("reasons", []):
        con.print(Text("  - " + r, style="dim"))
    if p.get("command"):
        con.print(Text("  command:", style="green"))
        for c in p["command"]:
            con.print(Text("    " + c, style="green"), soft_wrap=True)
    alt = p.get("alternatives") or {}
    if alt:
        con.print(Text(f"  no-install alternative: backends usable now: {', '.join(alt.get('usable') or []) or 'none'}; "
                       f"anyattn picks {alt.get('chosen')}" + (f" ({alt['note']})" if alt.get("note") else ""), style="cyan"))
