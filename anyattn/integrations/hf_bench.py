"""Benchmark ``attn_implementation="anyattn"`` against transformers' own implementations.

    python3 -m anyattn.integrations.hf_bench --out results/hf          # GPU, ~6 minutes on an H200
    python3 -m anyattn.integrations.hf_bench --tiny --out /tmp/hf      # CPU smoke run, seconds

Models (random weights, bf16 on GPU, 4 decoder layers so the whole run fits its time budget):
``llama3-8b`` (hidden 4096, 32 heads, 8 KV heads, head dim 128), ``gemma2-9b`` (softcap 50,
alternating 4096-token sliding layers, head dim 256) and ``gpt-oss-20b`` (sinks, alternating
128-token sliding layers, 64 heads of dim 64, MoE). Rows: prefill tokens/s (4 x 4k, 1 x 32k),
one training step (forward + backward) tokens/s (2 x 4k, 1 x 16k), greedy decode tokens/s after a
512-token prompt at batch 1 and 16 (dynamic cache; static cache + torch.compile, which generate()
turns on by itself for a static cache on CUDA). Columns: "anyattn", "sdpa", "eager",
"flex_attention" and "flash_attention_2/3/4" when their package imports. The Gemma-2 and
gpt-oss models run fewer rows (their features are the point, not the sweep).

Every case runs in its own try/except: a failure is recorded with its error and the rest go on.
Timing uses CUDA events after a warm-up, with ``torch.cuda.synchronize()`` around each measured
region. A case the budget cannot afford, or that would not fit (eager at 16k/32k materialises
Sq x Sk scores per head: 32 heads x 32k^2 x 2 bytes = 64 GiB per layer), is skipped with the
reason. The table goes to stdout and every number (with the errors and skips) to
``--out/hf_bench.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback

import torch

IMPLS = ["anyattn", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3",
         "flash_attention_4"]


def _has(module: str) -> bool:
    try:  # find_spec of a submodule imports its parent, which may be a broken build
        return importlib.util.find_spec(module) is not None
    except Exception:  # noqa: BLE001 - broken means unavailable, with the case recorded as such
        return False


def _available_impls(device: str) -> tuple[list[str], dict[str, str]]:
    have, why = [], {}
    for impl in IMPLS:
        if impl == "flash_attention_2":
            ok = device == "cuda" and _has("flash_attn")
        elif impl == "flash_attention_3":
            ok = device == "cuda" and _has("flash_attn_interface")
        elif impl == "flash_attention_4":
            ok = device == "cuda" and _has("flash_attn") and _has("flash_attn.cute")
        elif impl == "flex_attention":
            ok = device == "cuda"  # compiled flex on CPU costs minutes of C++ builds per shape
        else:
            ok = True
        if ok:
            have.append(impl)
        else:
            why[impl] = "package not importable here" if device == "cuda" else "CUDA only in this benchmark"
    return have, why


def _model_configs(tiny: bool):
    from transformers import Gemma2Config, GptOssConfig, LlamaConfig

    if tiny:
        common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        return {
            "llama3-8b": LlamaConfig(**common),
            "gemma2-9b": Gemma2Config(**common, head_dim=32, sliding_window=16, attn_logit_softcapping=50.0,
                                      layer_types=["sliding_attention", "full_attention"]),
            "gpt-oss-20b": GptOssConfig(**{**common, "intermediate_size": 64}, head_dim=16, num_local_experts=4,
                                        num_experts_per_tok=2, sliding_window=16,
                                        layer_types=["sliding_attention", "full_attention"]),
        }
    return {
        "llama3-8b": LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                                 num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                 max_position_embeddings=40960, rope_theta=500000.0),
        "gemma2-9b": Gemma2Config(vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=4,
                                  num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                                  sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                  query_pre_attn_scalar=256, max_position_embeddings=40960,
                                  layer_types=["sliding_attention", "full_attention"] * 2),
        "gpt-oss-20b": GptOssConfig(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=4,
                                    num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
                                    num_experts_per_tok=4, sliding_window=128, max_position_embeddings=40960,
                                    layer_types=["sliding_attention", "full_attention"] * 2),
    }


def _cases(tiny: bool):
    """(model, kind, batch, seqlen): kind prefill | train | decode | decode_static_compile."""
    if tiny:
        s = 32
        return [(m, kind, b, s) for m in ("llama3-8b", "gemma2-9b", "gpt-oss-20b")
                for kind, b in (("prefill", 2), ("train", 2), ("decode", 2))]
    out = [("llama3-8b", "prefill", 4, 4096), ("llama3-8b", "prefill", 1, 32768),
           ("llama3-8b", "train", 2, 4096), ("llama3-8b", "train", 1, 16384),
           ("llama3-8b", "decode", 1, 512), ("llama3-8b", "decode", 16, 512)]
    for m in ("gemma2-9b", "gpt-oss-20b"):
        out += [(m, "prefill", 4, 4096), (m, "train", 2, 4096), (m, "decode", 16, 512)]
    # Last: each costs a reduce-overhead compile (tens of seconds), so the budget cuts these first.
    out += [("llama3-8b", "decode_static_compile", 1, 512), ("llama3-8b", "decode_static_compile", 16, 512)]
    return out


class _Timer:
    def __init__(self, device):
        self.cuda = device == "cuda"

    def __call__(self, fn, iters: int, warmup: int = 1) -> float:
        """Median seconds per call of fn()."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if self.cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]


def _skip_reason(impl, model, kind, b, s, tiny) -> str | None:
    if tiny:
        return None
    if impl == "eager" and s >= 16384:
        return f"eager materialises {b} x heads x {s}^2 scores per layer (tens of GiB): out of memory"
    if kind == "decode_static_compile" and impl not in ("anyattn", "sdpa"):
        return "static cache + compile runs for anyattn and sdpa only (each is a reduce-overhead compile)"
    # Gemma-2 / gpt-oss under sdpa or flash_attention_2 are run, not skipped: what they refuse
    # (or get wrong) is part of the result.
    return None


def _run_case(model, impl, kind, b, s, vocab, timer, device, tiny, new_tokens):
    model.set_attn_implementation(impl)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(3, vocab, (b, s), device=device, generator=g)
    if kind == "prefill":
        model.eval()

        def step():
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)
        sec = timer(step, iters=2 if tiny else 3)
        return {"tokens_per_s": b * s / sec, "seconds": sec}
    if kind == "train":
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            loss = model(ids, labels=ids, use_cache=False).loss
            loss.backward()
        sec = timer(step, iters=2 if tiny else 3)
        model.zero_grad(set_to_none=True)
        model.eval()
        return {"tokens_per_s": b * s / sec, "seconds": sec}
    # decode: time generate(new_tokens) minus generate(1) (= the prefill), greedy, no EOS stop
    model.eval()
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None, min_new_tokens=None)
    if kind == "decode_static_compile":
        kw["cache_implementation"] = "static"

    def gen(n):
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, **kw)
    t_full = timer(lambda: gen(new_tokens), iters=1, warmup=1 if kind == "decode" else 2)
    t_prefill = timer(lambda: gen(1), iters=1, warmup=0)
    decode_s = max(t_full - t_prefill, 1e-9)
    return {"tokens_per_s": b * (new_tokens - 1) / decode_s, "seconds": decode_s, "prompt": s,
            "new_tokens": new_tokens}


def _table(results) -> str:
    rows: dict = {}
    impls: list[str] = []
    for r in results:
        key = (r["model"], r["kind"], r["batch"], r["seqlen"])
        rows.setdefault(key, {})[r["impl"]] = r
        if r["impl"] not in impls:
            impls.append(r["impl"])
    head = f"{'model':12s} {'row':26s} " + " ".join(f"{i[:12]:>12s}" for i in impls)
    lines = [head, "-" * len(head)]
    for (m, kind, b, s), cells in rows.items():
        label = f"{kind} {b}x{s}" if kind in ("prefill", "train") else f"{kind} b{b}"
        vals = []
        for i in impls:
            c = cells.get(i)
            if c is None:
                vals.append(f"{'':>12s}")
            elif "tokens_per_s" in c:
                t = c["tokens_per_s"]
                vals.append(f"{(f'{t / 1000:.1f}k' if t >= 10000 else f'{t:.0f}'):>12s}")
            else:
                vals.append(f"{('skip' if 'skipped' in c else 'ERROR'):>12s}")
        lines.append(f"{m:12s} {label:26s} " + " ".join(vals))
    lines.append("(tokens/s; decode rows count generated tokens only; ERROR/skip reasons are in the JSON)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m anyattn.integrations.hf_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory for hf_bench.json")
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU (a smoke run in seconds)")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds; later cases are skipped past it")
    ap.add_argument("--impl", action="append", help="only these implementations (repeatable)")
    ap.add_argument("--model", action="append", help="only these models (repeatable)")
    args = ap.parse_args(argv)

    import transformers
    from transformers import AutoModelForCausalLM

    import anyattn
    import anyattn.hf  # noqa: F401 - registers "anyattn"

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    impls, unavailable = _available_impls(device)
    if args.impl:
        impls = [i for i in impls if i in args.impl]
    configs = _model_configs(args.tiny)
    cases = [c for c in _cases(args.tiny) if not args.model or c[0] in args.model]
    timer = _Timer(device)
    new_tokens = 8 if args.tiny else 128
    t_start = time.perf_counter()
    results = []
    built: dict = {}
    explanations = {}

    def get_model(name):
        # Built once and kept (the three 4-layer models take ~20 GB in bf16), so the expensive
        # static+compile rows can come last.
        if name not in built:
            built[name] = None
            try:
                torch.manual_seed(0)
                cfg = configs[name]
                cfg.eos_token_id = None  # decode rows generate exactly new_tokens tokens
                with torch.device(device):
                    try:
                        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="anyattn", dtype=dtype)
                    except TypeError:  # an older from_config without dtype=
                        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="anyattn").to(dtype)
                model.generation_config.eos_token_id = None
                built[name] = model.eval()
                explanations[name] = anyattn.hf.explain(model, training=True).to_dict()
            except Exception as exc:  # noqa: BLE001 - one model failing must not stop the others
                results.append({"model": name, "impl": "*", "kind": "build", "batch": 0, "seqlen": 0,
                                "error": f"{type(exc).__name__}: {exc}"})
                print(f"[{name}] build failed: {exc}", flush=True)
        return built[name]

    for m, kind, b, s in cases:
        if get_model(m) is None:
            continue
        for impl in impls:
            rec = {"model": m, "impl": impl, "kind": kind, "batch": b, "seqlen": s}
            reason = _skip_reason(impl, m, kind, b, s, args.tiny)
            if reason is None and time.perf_counter() - t_start > args.budget:
                reason = f"time budget of {args.budget:.0f} s spent"
            if reason:
                rec["skipped"] = reason
                results.append(rec)
                continue
            try:
                rec.update(_run_case(built[m], impl, kind, b, s, configs[m].vocab_size, timer, device,
                                     args.tiny, new_tokens))
                print(f"[{m}] {kind} {b}x{s} {impl}: {rec['tokens_per_s']:.0f} tok/s", flush=True)
            except Exception as exc:  # noqa: BLE001 - record and go on
                rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                rec["traceback"] = traceback.format_exc(limit=3)[-1500:]
                print(f"[{m}] {kind} {b}x{s} {impl}: ERROR {rec['error']}", flush=True)
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
            results.append(rec)

    table = _table([r for r in results if r["kind"] != "build"])
    print(table)
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "anyattn": anyattn.__version__,
           "python": platform.python_version(), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "dtype": str(dtype).replace("torch.", ""), "unavailable": unavailable,
           "command": "python3 -m anyattn.integrations.hf_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "wall_s": round(time.perf_counter() - t_start, 1)}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "hf_bench.json")
    with open(path, "w") as f:
        json.dump({"env": env, "results": results, "explain": explanations, "table": table}, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
