"""``anyattn bench --only overhead`` without a GPU: the tiny mode runs the CPU rows, the GPU rows
say why they are skipped, JSON and the table come out, and ``bench --only overhead`` reaches it."""

import argparse
import json

from anyattn import bench, bench_overhead


def test_tiny_mode_on_cpu(tmp_path, capsys):
    path = tmp_path / "ov.json"
    assert bench_overhead.main(["--tiny", "--device", "cpu", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    rows = {r["label"]: r for r in doc["rows"]}
    assert rows["F.sdpa direct, torch's pick"]["us"] > 0
    own = rows["  anyattn's own work: validation + cached selection"]
    assert own["us"] > 0 and own["note"] is None
    auto = next(r for label, r in rows.items() if label.startswith("anyattn.attention automatic"))
    assert auto["us"] > 0
    assert "needs a CUDA GPU" in rows["anyattn.attention(backend='triton')"]["note"]
    assert doc["bandwidth"] == [] and doc["copy_gbs"] is None
    assert doc["env"]["calls"] == 5 and doc["env"]["repeats"] == 2
    out = capsys.readouterr().out
    assert "host µs per call" in out and "validation + cached selection" in out


def test_host_us_times_every_call_and_takes_the_median():
    n = []
    us = bench_overhead.host_us(lambda: n.append(1), _cpu(), calls=7, repeats=3,
                                warmup=2)
    assert len(n) == 2 + 7 * 3 and us > 0


def _cpu():
    import torch

    return torch.device("cpu")


def test_failing_piece_becomes_a_row_with_its_reason():
    rows = bench_overhead._Rows(_cpu(), 2, 1)
    rows.add("g", "direct", lambda: None)

    def boom():
        raise ValueError("internal API moved")

    r = rows.add("g", "piece", boom, base="direct")
    assert r["us"] is None and "internal API moved" in r["note"]
    r = rows.add("g", "other", lambda: None, base="direct")
    assert r["over_what"] == "direct" and isinstance(r["over"], float)


def test_bench_only_overhead_dispatches(monkeypatch):
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--only", "overhead", "--json", "x.json", "--device", "cuda:1"])
    seen = []
    monkeypatch.setattr(bench_overhead, "main", lambda argv: seen.append(argv) or 0)
    assert bench.main(args) == 0
    assert seen == [["--device", "cuda:1", "--json", "x.json"]]


def test_profile_mode_prints_top_functions(tmp_path, capsys):
    path = tmp_path / "ov.json"
    assert bench_overhead.main(["--tiny", "--device", "cpu", "--profile", "--profile-top", "5",
                                "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    (label, rows), = doc["profile"].items()
    assert label.startswith("anyattn.attention automatic")
    assert len(rows) == 5 and rows == sorted(rows, key=lambda r: -r["tottime_us"])
    # the op itself is among the profiled frames, once per call
    assert any("attention" in r["function"] for r in rows)
    assert "cProfile, top by tottime" in capsys.readouterr().out
