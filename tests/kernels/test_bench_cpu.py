"""`anyattn bench` pieces that need no GPU: the parser, ratios and the tables."""

import argparse

from anyattn import bench


def _rows():
    rows = []
    for be, v in (("triton", 500.0), ("sdpa_cudnn", 600.0), ("flex", None)):
        rows.append(dict(kind="prefill", head_dim=128, seqlen=16384, batch=1, heads=16, causal=False,
                         backend=be, value=v, unit="TFLOP/s", first_call_s=1.0,
                         reason=None if v else "not installed"))
    for be, v in (("triton", 3500.0), ("sdpa_cudnn", 3900.0)):
        rows.append(dict(kind="decode", batch=16, context=4096, block_size=16, backend=be, value=v,
                         unit="GB/s", copy_fraction=v / 4200))
    return rows


def test_register_adds_bench_subcommand():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.register(sub)
    args = parser.parse_args(["bench", "--quick", "--json", "out.json", "--only", "decode"])
    assert args.func is bench.main and args.quick and args.json == "out.json"


def test_ratios_and_tables():
    rows = _rows()
    bench._ratios(rows)
    tri = next(r for r in rows if r["backend"] == "triton" and r["kind"] == "prefill")
    assert abs(tri["ratios"]["sdpa_cudnn"] - 500 / 600) < 1e-9
    assert "flex" not in tri["ratios"]
    tables = bench._table(rows, 4200.0, ["triton", "sdpa_cudnn", "flex"])
    assert len(tables) == 2
    from rich.console import Console

    console = Console(record=True, width=200)
    for t in tables:
        console.print(t)
    text = console.export_text()
    assert "0.83" in text and "83%" in text


def test_main_without_gpu_says_so(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(argparse.Namespace()) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
