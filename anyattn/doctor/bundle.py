"""``anyattn doctor --bundle FILE``: one file with what maintainers ask for in a bug report.

Python; torch and ``torch.version.cuda``; nvcc; driver and GPUs; every attention package with its
version and where it came from (pip / uv / conda / editable / a ``--target`` directory / a wheel
URL); the findings; the decision table for a typical request; the last anyattn warnings. Secrets
(Hugging Face / GitHub / OpenAI-style tokens, AWS keys, ``password=`` / ``token=`` values) and home
directories are redacted before anything is written. ``FILE`` ending in ``.json`` gets JSON,
anything else Markdown (paste it into an issue).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional

BUNDLE_SCHEMA = 1

_SECRETS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "hf_<redacted>"),
    (re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"), "gh_<redacted>"),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), "github_pat_<redacted>"),
    (re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"), "sk-<redacted>"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AKIA<redacted>"),
    (re.compile(r"(?i)(aws_secret_access_key|aws_session_token)(\s*[=:]\s*|\"\s*:\s*\")[A-Za-z0-9/+=]{16,}"),
     r"\1\2<redacted>"),
    (re.compile(r"(?i)\b((?:[A-Z0-9_]*_)?(?:token|password|passwd|secret|api_key|apikey))(\s*[=:]\s*|\"\s*:\s*\")"
                r"(?!<redacted>)[^\s\"',;]{6,}"), r"\1\2<redacted>"),
    (re.compile(r"(https?://)[^/\s:@]+:[^/\s@]+@"), r"\1<user>:<redacted>@"),  # credentials in URLs
]


def redact(text: str, home: Optional[str] = None) -> str:
    """``text`` without secrets; ``home`` (default $HOME) -> ``~``, other users' homes -> ``/home/<user>``."""
    home = home if home is not None else os.path.expanduser("~")
    for rx, rep in _SECRETS:
        text = rx.sub(rep, text)
    if home and home not in ("/", "~") and len(home) > 1:
        text = re.sub(re.escape(home.rstrip("/")) + r"(?=/|\b|$)", "~", text)
    text = re.sub(r"/(home|Users)/(?!<user>)[^/\s\"':]+", r"/\1/<user>", text)
    text = re.sub(r"(?i)([A-Z]:\\\\?Users\\\\?)(?!<user>)[^\\\s\"':]+", r"\1<user>", text)
    return text


def package_origin(p: Dict[str, Any], sys_path: List[str], env: Dict[str, str]) -> str:
    """Where an installed distribution came from, in the words of a bug report."""
    o = p.get("origin") or {}
    loc = p.get("location") or ""
    inst = (o.get("installer") or "").lower()
    if o.get("editable"):
        return f"editable install ({o.get('url', loc)})"
    if o.get("vcs"):
        return f"{inst or 'pip'} from {o.get('vcs')} {o.get('url', '')}".strip()
    if o.get("wheel"):
        how = f"{inst or 'pip'} from wheel {o['wheel']}"
    elif inst == "conda" or "/conda" in loc and not inst:
        how = "conda"
    else:
        how = inst or "unknown installer"
    site = [s for s in sys_path if s.endswith(("site-packages", "dist-packages"))]
    if loc and site and loc.rstrip("/") not in [s.rstrip("/") for s in site]:
        how += f", outside site-packages: {loc} (pip --target / PYTHONPATH)"
    elif loc:
        how += f", {loc}"
    return how


def build(facts, findings, backends, warnings: Optional[List[Dict[str, str]]] = None) -> Dict[str, Any]:
    t = facts.torch or {}
    tk = facts.toolkit or {}
    st = facts.stack or {}
    sys_path = st.get("sys_path") or []
    pk = []
    for name, p in sorted((facts.packages or {}).items()):
        if not p.get("installed"):
            continue
        pr = p.get("probe") or {}
        pk.append({"name": name, "version": p.get("version"), "origin": package_origin(p, sys_path, facts.env or {}),
                   "import": (None if not pr else "ok (%.1f s)" % (pr.get("seconds") or 0) if pr.get("ok")
                              else (pr.get("error") or pr.get("signal") or "failed"))})
    seen = {x["name"] for x in pk}
    for name, ver in sorted((st.get("versions") or {}).items()):
        if name not in seen and name not in ("torch",):
            o = dict((st.get("origins") or {}).get(name) or {})
            pk.append({"name": name, "version": ver,
                       "origin": package_origin({"origin": o, "location": o.get("location")}, sys_path, facts.env or {}),
                       "import": None})
    rows = [{"backend": s.get("name"), "usable": bool(s.get("usable")), "why": "; ".join(s.get("reasons") or [])}
            for s in backends.get("statuses", [])]
    return {
        "schema": BUNDLE_SCHEMA, "collected_at": facts.collected_at, "live": bool(facts.live),
        "python": {"version": (facts.python or {}).get("version"), "executable": (facts.python or {}).get("executable"),
                   "implementation": (facts.python or {}).get("implementation")},
        "os": (facts.os or {}).get("platform"),
        "torch": {"version": t.get("version"), "torch.version.cuda": t.get("cuda"), "hip": t.get("hip"),
                  "cxx11_abi": t.get("cxx11_abi"), "cuda_available": t.get("cuda_available"),
                  "arch_list": t.get("arch_list"), "error": t.get("error")},
        "nvcc": {"cuda_home": tk.get("cuda_home"), "found_by": tk.get("found_by"), "nvcc": tk.get("nvcc"),
                 "version": tk.get("nvcc_version")},
        "driver": dict(facts.driver or {}), "gpus": list(facts.gpus or []),
        "attention_packages": pk,
        "findings": [x.to_dict() for x in findings],
        "decision": {"request": backends.get("request"), "source": backends.get("source"), "chosen": backends.get("chosen"),
                     "table": rows, "note": backends.get("note")},
        "anyattn_warnings": list(warnings or []),
        "env": dict(facts.env or {}), "notes": list(facts.notes or []),
    }


def to_markdown(b: Dict[str, Any]) -> str:
    L = ["# anyattn doctor bundle", "",
         "Attach this file to a bug report (anyattn, flash-attn, FlashInfer, xFormers, vLLM, SGLang).", "",
         f"- Python: {b['python']['version']} ({b['python']['executable']})",
         f"- OS: {b['os']}",
         f"- torch: {b['torch']['version']}, torch.version.cuda: {b['torch']['torch.version.cuda']}"
         + (f", hip: {b['torch']['hip']}" if b['torch'].get('hip') else "")
         + f", cxx11abi: {b['torch']['cxx11_abi']}, cuda available: {b['torch']['cuda_available']}",
         f"- nvcc: {b['nvcc']['version'] or 'none'} (CUDA_HOME={b['nvcc']['cuda_home']}, {b['nvcc']['found_by']})",
         f"- driver: {b['driver'].get('version') or '?'} (CUDA {b['driver'].get('cuda') or '?'})"]
    for g in b["gpus"]:
        L.append(f"- GPU {g.get('index')}: {g.get('name')}, sm{str(g.get('cc') or '?').replace('.', '')}, "
                 f"{(g.get('memory_mb') or 0) // 1024} GiB, {g.get('pci_bus_id') or ''}")
    if not b["gpus"]:
        L.append("- GPU: none visible")
    L += ["", "## Attention packages", "", "| package | version | from | import |", "| --- | --- | --- | --- |"]
    for p in b["attention_packages"]:
        L.append(f"| {p['name']} | {p['version']} | {p['origin']} | {p['import'] or '-'} |")
    L += ["", "## Findings", ""]
    for x in b["findings"]:
        L.append(f"- **[{x['severity']}] {x['id']}**: {x['title']}")
    if not b["findings"]:
        L.append("- none")
    d = b["decision"]
    L += ["", f"## Decision for a typical request ({json.dumps(d['request'])}, from {d['source']})", "",
          "| backend | usable | why not / what |", "| --- | --- | --- |"]
    for r in d["table"]:
        L.append(f"| {r['backend']} | {'yes' if r['usable'] else 'no'} | {r['why'] or ''} |")
    L += ["", f"anyattn picks: **{d['chosen']}**" + (f" ({d['note']})" if d.get("note") else ""), "",
          "## Last anyattn warnings", ""]
    L += [f"- {w['time']} {w['level']} {w['logger']}: {w['message']}" for w in b["anyattn_warnings"]] or ["- none"]
    L += ["", "## Everything (JSON)", "", "```json", json.dumps(b, indent=1, default=str), "```", ""]
    return "\n".join(L)


def write(path: str, facts, findings, backends, warnings=None, home: Optional[str] = None) -> str:
    """Write the redacted bundle to ``path``; returns the text written."""
    b = build(facts, findings, backends, warnings)
    text = json.dumps(b, indent=1, default=str) if path.endswith(".json") else to_markdown(b)
    text = redact(text, home)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return text
