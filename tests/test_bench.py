"""``anyattn bench``'s verdict on automatic selection (pure functions: no GPU)."""

from anyattn.bench import _ratios, auto_summary


def _case(kind, seqlen, values, chosen, **extra):
    rows = [dict(kind=kind, seqlen=seqlen, batch=4, head_dim=128, causal=False, backend=name, value=v, **extra)
            for name, v in values.items()]
    rows.append(dict(kind=kind, seqlen=seqlen, batch=4, head_dim=128, causal=False, backend="auto",
                     value=values.pop("auto"), chosen=chosen, **extra))
    return rows


def test_auto_summary_splits_timing_spread_from_a_different_choice():
    rows = (_case("prefill", 4096, {"flash_attn_4": 600.0, "sdpa_cudnn": 500.0, "auto": 570.0}, "flash_attn_4")
            + _case("prefill", 16384, {"flash_attn_4": 600.0, "sdpa_cudnn": 500.0, "auto": 606.0}, "flash_attn_4")
            + _case("decode", None, {"triton": 3300.0, "flash_attn_4": 3400.0, "auto": 3290.0}, "triton",
                    context=4096, block_size=128))
    _ratios(rows)
    line = auto_summary(rows)
    assert line.startswith("auto >= 0.98 x best on 1/3 shapes (min 0.95)")
    assert "fastest backend on 2/3 (there auto/best = 0.95-1.01: one kernel timed twice)" in line
    # the one real miss names its shape, the choice and the faster backend
    assert line.endswith("another choice: decode d128 4096 b4 page 128 triton 0.97x flash_attn_4")


def test_auto_summary_without_an_auto_column_is_empty():
    rows = [dict(kind="prefill", seqlen=512, backend="triton", value=1.0)]
    _ratios(rows)
    assert auto_summary(rows) == ""
