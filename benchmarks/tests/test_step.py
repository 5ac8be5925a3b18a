"""Tests of benchmarks.step (`python -m benchmarks train`): both contenders really train,
the record holds the figures, the machine and the versions, and the results file gains one
JSON line per run.

Run with `pytest benchmarks/tests/test_step.py -q` (about 20 s: two fresh processes at tiny sizes).
These check the mechanics; the figures themselves come from running the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import records, step
from benchmarks.cli import main

TINY = {"image_size": 16, "latent_dim": 8, "filters": 8}


@pytest.mark.parametrize("contender", step.CONTENDERS)
def test_measure_times_real_steps(contender: str) -> None:
    rate = step.measure(contender, "tutorial", batch_size=8, precision="float32", steps=3,
                         warmup=2, **TINY)
    assert 0 < rate < 1e6


@pytest.mark.slow
def test_run_benchmark_alternates_fresh_processes(tmp_path: Path) -> None:
    record = step.run_benchmark("paper", 8, "mixed_bfloat16", steps=2, warmup=1, repeats=1,
                                 **TINY)
    assert record["benchmark"] == "train_throughput"
    assert (record["arch"], record["batch_size"], record["precision"]) == (
        "paper", 8, "mixed_bfloat16")
    rates = record["images_per_sec"]
    assert rates["ours"] > 0 and rates["tutorial_baseline"] > 0
    assert record["ours_over_tutorial"] == pytest.approx(
        rates["ours"] / rates["tutorial_baseline"], rel=0.01)
    assert [len(v) for v in record["runs"].values()] == [1, 1]
    assert record["cores"] >= 1 and record["tensorflow"] and record["keras"] and record["cpu"]
    results = tmp_path / "bench" / "results.jsonl"
    records.append_result(record, results)
    records.append_result(record, results)
    lines = results.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == record


def test_cli_rejects_a_bad_batch_size(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive whole number, got '0'" in capsys.readouterr().err


def test_flops_per_image_count_the_layers() -> None:
    """The 64x64x3 paper nets (PyTorch's DCGAN widths) by hand, multiply-adds per image:
    G: z->512 at 4x4 (1x1 input), then 4x4 kernels scattered from 4x4, 8x8, 16x16, 32x32
    inputs; D: 4x4 kernels at 32x32, 16x16, 8x8, 4x4 outputs, then 8192 -> 1."""
    from benchmarks.peer import flops_per_image

    g_macs = [100 * 512 * 16, 16 * 16 * 512 * 256, 64 * 16 * 256 * 128, 256 * 16 * 128 * 64,
              1024 * 16 * 64 * 3]
    d_macs = [1024 * 16 * 3 * 64, 256 * 16 * 64 * 128, 64 * 16 * 128 * 256, 16 * 16 * 256 * 512,
              8192]
    g, g1, d, d1 = 2 * sum(g_macs), 2 * g_macs[0], 2 * sum(d_macs), 2 * d_macs[0]
    rest = 2 * d + 2 * (d - d1) + d + g + (g - g1)  # D's weight and input gradients, G's
    expected = {"alternating": 2 * g + 3 * d + rest, "simultaneous": g + 2 * d + rest,
                "reuse_fake": g + 3 * d + rest}
    assert flops_per_image() == {k: round(v / 1e9, 4) for k, v in expected.items()}
    assert flops_per_image()["alternating"] == pytest.approx(2.4839)  # about 2.5 GFLOP


@pytest.mark.usefixtures("no_torch")
def test_peer_without_pytorch_is_one_line(capsys: pytest.CaptureFixture) -> None:
    """Without the benchmark-only dependency: one line naming the requirements file."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--peer", "pytorch", "--results", "/dev/null"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: PyTorch is not installed") and "requirements-bench.txt" in err
