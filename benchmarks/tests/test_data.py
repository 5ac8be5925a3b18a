"""Tests of benchmarks.data, the `python -m benchmarks data` benchmark: its disk and page-cache
measures on real files, its clean-up when interrupted, and the whole benchmark at tiny sizes
(48 images of 16 px in 2 classes, 2 train steps: real DVC, real MLflow, every stage), whose
record must hold every figure. The figures themselves come from running it.

Run with `pytest benchmarks/tests/test_data.py -q` (about 4 minutes on 2 cores, nearly all in
the slow test: some twenty fresh processes that import TensorFlow).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import data, speed
from dcgan.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
# Not track: train_steps writes G, D and the run, not the per-epoch files it shows.
STAGES = {"fetch", "preprocess", "classifier", "train", "generate", "evaluate", "probe"}
TARGETS = {"stage_rss", "disk", "preprocess_scaling", "train_from_disk"}


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's directory, here: the benchmark's temporary directory is made in it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_disk_bytes_counts_a_hardlinked_file_once(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.bin").write_bytes(os.urandom(100_000))
    (tmp_path / "cache").mkdir()
    os.link(tmp_path / "data/a.bin", tmp_path / "cache/a.bin")  # as DVC's hardlink cache
    (tmp_path / "data/b.bin").write_bytes(os.urandom(50_000))
    blocks = {p: os.stat(tmp_path / p).st_blocks * 512 for p in ("data", "cache",
                                                                  "data/a.bin", "data/b.bin")}
    assert blocks["data/a.bin"] >= 100_000
    both = data.disk_bytes(tmp_path / "data", tmp_path / "cache", tmp_path / "missing")
    assert both == sum(blocks.values())  # a.bin once, though it is in both folders
    assert data.disk_bytes(tmp_path / "cache/a.bin") == blocks["data/a.bin"]


@pytest.mark.skipif(shutil.which("fincore") is None, reason="no util-linux fincore")
def test_page_cache_drops_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(os.urandom(8_000_000))
    assert speed.page_cache([path], "cold") < 0.1
    assert speed.page_cache([path], "warm") == 1.0


def test_bad_sizes_are_refused_before_any_work(own_tmp: Path) -> None:
    with pytest.raises(UserError, match="--size 30 must suit the paper arch"):
        data.run(images=48, size=30, repo=REPO)
    with pytest.raises(UserError, match="--images >= 10 and >= 2x --classes"):
        data.run(images=48, size=16, classes=30, repo=REPO)
    assert not list(own_tmp.iterdir())


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupted_benchmark_leaves_no_temporary_directory(
        stop: str, own_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def interrupt(work: Path, steps: int, array_bytes: int) -> None:
        # By now the folder is drawn and the DVC repo set up; Ctrl-C comes in the stages.
        seen["work"] = work
        seen["images"] = len(list(work.parent.glob("images/class_*/*.jpg")))
        seen["config"] = (work / ".dvc/config").read_text()
        if stop == "sigterm":  # a supervisor's kill
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_stage_peaks", interrupt)
    with pytest.raises(SystemExit if stop == "sigterm" else KeyboardInterrupt):
        data.run(images=20, size=16, classes=2, second=0, repo=REPO)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    assert seen["work"].is_relative_to(own_tmp) and seen["images"] == 20
    assert seen["config"] == (REPO / ".dvc/config").read_text()  # the project's cache type
    assert not seen["work"].exists() and not list(own_tmp.iterdir())


def _numbers(node: object, path: str = "") -> Iterator[tuple[str, float]]:
    """(path, value) of every number in a record, booleans aside."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, node


@pytest.mark.slow
def test_the_whole_benchmark_at_tiny_sizes(own_tmp: Path) -> None:
    record = data.run(images=48, size=16, classes=2, second=0, train_steps=2,
                            repeats=1, repo=REPO)
    assert record["benchmark"] == "data" and isinstance(record["met"], bool)
    assert set(record["targets"]) == TARGETS
    assert record["met"] == all(record["targets"].values())
    assert all(isinstance(v, bool) for v in record["targets"].values())
    assert (record["images"], record["size"], record["classes"]) == (48, 16, 2)
    assert record["train_steps"] == 2 and record["second"] is None
    assert set(record["stages"]) == STAGES and record["stages"]["train"]["steps"] == 2
    assert record["peak_rss_mb"] == max(s["peak_rss_mb"] for s in record["stages"].values())
    assert 100 < record["peak_rss_mb"] < 3000  # a stage imports TensorFlow: ~1 GB
    assert record["disk"]["array_bytes"] == 48 * 16 * 16 * 3
    assert record["folder"]["bytes"] > 48 * 100  # JPEGs, not empty files
    assert record["preprocess"]["images"] == 48
    assert set(record["preprocess"]["runs"]) == {"one", "all"}
    assert set(record["train_throughput"]) == {"16px", "28px"}
    for rate in record["train_throughput"].values():
        assert set(rate["runs"]) == {"memory", "disk", "disk_cold"}
        assert rate["disk_over_memory"] == pytest.approx(
            rate["disk_images_per_sec"] / rate["memory_images_per_sec"], rel=1e-2)
    assert record["precision"] in ("float32", "mixed_bfloat16")
    numbers = dict(_numbers(record))
    assert len(numbers) > 40
    # A dropped page cache may hold nothing of the files: 0 is a true reading there.
    assert [(p, v) for p, v in numbers.items() if v <= 0 and "disk_cold[" not in p] == []
    assert not list(own_tmp.iterdir())  # the temporary directory is gone
