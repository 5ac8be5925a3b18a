"""Tests of dcgan.tools.bench (`dcgan bench train`): both contenders really train, the record holds
the figures, the machine and the versions, and the results file gains one JSON line per run.

Run with `pytest tests/test_bench.py -q` (about 20 s: two fresh processes at tiny sizes).
These check the mechanics; the figures themselves come from running the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcgan.tools import bench
from dcgan.tools.cli import main

TINY = {"image_size": 16, "latent_dim": 8, "filters": 8}


@pytest.mark.parametrize("contender", bench.CONTENDERS)
def test_measure_times_real_steps(contender: str) -> None:
    rate = bench.measure(contender, "tutorial", batch_size=8, precision="float32", steps=3,
                         warmup=2, **TINY)
    assert 0 < rate < 1e6


def test_run_benchmark_alternates_fresh_processes(tmp_path: Path) -> None:
    record = bench.run_benchmark("paper", 8, "mixed_bfloat16", steps=2, warmup=1, repeats=1,
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
    bench.append_result(record, results)
    bench.append_result(record, results)
    lines = results.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == record


def test_cli_rejects_a_bad_batch_size(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "train", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive whole number, got '0'" in capsys.readouterr().err
