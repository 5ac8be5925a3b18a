"""Tests of benchmarks.stages: the mechanics of the stage benchmarks at tiny sizes (the
figures themselves come from running them). The RSS reading is checked against a child
that allocates a known amount, also from a parent that holds a large buffer itself; the
no-op repro runs real DVC in a one-stage repo; stage_memory runs the real preprocess stage
on 60,000 images in fetch's format.

Run with `pytest benchmarks/tests/test_stages.py -q` (about 40 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from test_evaluation import write_dataset

from benchmarks import stages
from dcgan.core.config import TrainConfig
from dcgan.core.errors import UserError
from dcgan.evaluation.classifier import build_classifier
from dcgan.nets.architectures import Generator
from dcgan.nets.serialisation import save_model

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 1)
MACHINE = {"cpu", "cores", "tensorflow", "keras", "git_commit", "date"}


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# ---------------------------------------------------------------- peak RSS of a child


def test_peak_rss_reads_what_the_child_allocated(tmp_path: Path) -> None:
    code = "b = b'x' * 200_000_000; print(len(b))"  # every byte written: resident
    kib, seconds = stages.peak_rss(_python(code), tmp_path, {}, tmp_path / "log")
    assert 200e6 < kib * 1024 < 300e6
    assert seconds > 0
    assert (tmp_path / "log").read_text().strip() == "200000000"


def test_peak_rss_is_the_childs_own_not_its_parents(tmp_path: Path) -> None:
    # Spawned straight from a process this big, a child reads at least 300 MB (Linux keeps
    # the forking process's high-water RSS across exec).
    held = b"x" * 300_000_000
    kib, _ = stages.peak_rss(_python("pass"), tmp_path, {}, tmp_path / "log")
    assert kib * 1024 < 100e6
    assert len(held) == 300_000_000


def test_peak_rss_reports_a_failing_command_by_its_last_line(tmp_path: Path) -> None:
    code = "import sys; print('working'); sys.exit('error: no data here; run fetch')"
    with pytest.raises(UserError, match=r"failed \(exit 1\): error: no data here; run fetch"):
        stages.peak_rss(_python(code), tmp_path, {}, tmp_path / "log")


# ---------------------------------------------------------------- dvc.yaml commands


def test_stage_commands_fill_the_repos_paths() -> None:
    commands = stages.stage_commands(REPO / "dvc.yaml")
    assert set(commands) == set(stages.STAGES)
    train = commands["train"]
    assert train[:2] == ["python", "stages/train.py"]
    assert train[train.index("--generator") + 1] == "models/generator.keras"
    assert not any("$" in arg for cmd in commands.values() for arg in cmd)


def test_stage_commands_name_an_undefined_variable(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({
        "vars": [{"paths": {"raw": "data/raw"}}],
        "stages": {"fetch": {"cmd": "python stages/fetch.py --raw ${paths.rwa}"}}}))
    with pytest.raises(UserError, match=r"\$\{paths.rwa\} is not defined under vars"):
        stages.stage_commands(tmp_path / "dvc.yaml")


# ---------------------------------------------------------------- stage memory


@pytest.mark.slow
def test_stage_memory_runs_preprocess_on_60k_images_in_a_copy() -> None:
    record = stages.stage_memory("60k", train_epochs=2, until="preprocess", repo=REPO)
    assert record["benchmark"] == "stage_memory" and record["images"] == 60_000
    assert list(record["stages"]) == ["preprocess"]  # fetch skipped: its file was written
    # A real reading (a Python process with NumPy is > 20 MB), and below the images as
    # float32 (60,000 x 28 x 28 x 4 B = 188 MB): preprocess writes them a block at a time.
    assert 20 < record["stages"]["preprocess"]["peak_rss_mb"] < 188
    assert record["params"]["train.epochs"] == 2
    assert record["met"] is False  # no train figure: the target cannot be met
    assert set(record) >= MACHINE


def test_stage_memory_rejects_an_unknown_dataset() -> None:
    with pytest.raises(UserError, match="dataset 'mnist-70k'"):
        stages.stage_memory("mnist-70k", repo=REPO)


# ---------------------------------------------------------------- no-op dvc repro


def _dvc(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def one_stage_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dvc")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc("init", "-q", cwd=repo)
    (repo / "in.txt").write_text("a")
    copy = "import shutil; shutil.copy('in.txt', 'out.txt')"
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": {
        "cmd": f'python -c "{copy}"', "deps": ["in.txt"], "outs": ["out.txt"]}}}))
    _dvc("repro", "-q", cwd=repo)
    return repo


def test_noop_repro_times_runs_that_run_nothing(one_stage_repo: Path) -> None:
    record = stages.noop_repro_seconds(one_stage_repo, runs=2)
    assert record["benchmark"] == "noop_repro" and record["stages_ran"] == []
    assert len(record["runs"]) == 2 and record["seconds"] > 0
    assert record["met"] == (record["seconds"] <= 5)


def test_noop_repro_refuses_a_repo_with_changes(one_stage_repo: Path) -> None:
    (one_stage_repo / "in.txt").write_text("b")
    try:
        with pytest.raises(UserError, match="shows changes in copy, so `dvc repro` would"):
            stages.noop_repro_seconds(one_stage_repo)
        assert (one_stage_repo / "out.txt").read_text() == "a"  # nothing was reproduced
    finally:
        (one_stage_repo / "in.txt").write_text("a")


def test_noop_repro_refuses_a_directory_without_dvc(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="`dvc status` failed"):
        stages.noop_repro_seconds(tmp_path)


# ---------------------------------------------------------------- generate and evaluate


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    cfg = TrainConfig(latent_dim=8, g_filters=8, d_filters=8)
    save_model(Generator(cfg, SHAPE), root / "generator.keras")
    save_model(build_classifier(SHAPE, 3, 6), root / "classifier.keras")
    rng = np.random.default_rng(0)
    write_dataset(root / "dataset", rng.integers(0, 256, (50, *SHAPE), dtype=np.uint8),
                  rng.integers(0, 3, 50), rng.integers(0, 256, (30, *SHAPE), dtype=np.uint8),
                  rng.integers(0, 3, 30))
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"evaluate": {"batch_size": 16, "kid_subsets": 5, "kid_subset_size": 20}}))
    return root


def test_generate_rate_times_the_stages_sampling(models: Path) -> None:
    record = stages.generate_rate(models / "generator.keras", num_samples=64)
    assert record["benchmark"] == "generate" and record["samples"] == 64
    assert record["shape"] == list(SHAPE)
    # The rate comes from the unrounded time; seconds are rounded to 1 ms, the rate to 0.1.
    seconds, rate = record["seconds"], record["samples_per_sec"]
    assert seconds > 0.0005 and 64 / (seconds + 0.0005) - 0.05 <= rate
    assert rate <= 64 / (seconds - 0.0005) + 0.05
    assert record["met"] == (record["samples_per_sec"] >= 1000) and set(record) >= MACHINE


def test_generate_rate_names_a_missing_generator(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"generator.keras: no model here; run the train stage"):
        stages.generate_rate(tmp_path / "generator.keras")


@pytest.mark.parametrize(("real", "sizes"), [("default", (50, 30, 30)),
                                             ("full_mnist_size", (50_000, 10_000, 40))])
def test_evaluate_seconds_scores_at_the_common_n(models: Path, real: str, sizes: tuple) -> None:
    record = stages.evaluate_seconds(
        real, num_samples=40, data_file=models / "dataset",
        classifier_path=models / "classifier.keras",
        generator_path=models / "generator.keras", params_file=models / "params.yaml")
    assert (record["samples"], record["train"], record["test"], record["n"]) == (40, *sizes)
    assert record["seconds"] > 0 and np.isfinite(record["frechet_distance"])
    assert record["met"] == (record["seconds"] <= 60)


def test_evaluate_seconds_names_missing_data(models: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"dataset: not found; run the preprocess stage"):
        stages.evaluate_seconds(data_file=tmp_path / "dataset",
                                      params_file=models / "params.yaml")


def test_tiled_cycles_images_with_noise_in_range() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (3, *SHAPE)).astype(np.float32)
    out = stages.tiled(x, 7, np.random.default_rng(0))
    assert out.shape == (7, *SHAPE) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    assert np.abs(out[3] - x[0]).max() < 0.3 and not np.array_equal(out[3], out[0])
