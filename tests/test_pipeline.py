"""End-to-end: the real DVC pipeline in a temporary git clone, on tiny params, tracked in a
real MLflow SQLite store. Slow (about a minute); run with the rest by scripts/test.sh."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "preprocess": {"image_size": 16},
    "classifier": {"epochs": 1, "feature_dim": 16},
    "train": {"epochs": 2, "batch_size": 64, "latent_dim": 8, "g_filters": 8, "d_filters": 8,
              "eval_every": 1},
    "generate": {"num_samples": 64, "grid_rows": 4, "interp_steps": 4},
    "probe": {"train_sizes": [100]},
}
SUITE = ("frechet_distance", "kid", "kid_std", "precision", "recall", "classifier_score",
         "modes_covered", "mode_kl", "memorisation_ratio")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k != "GIT_DIR"}
    # `python` in dvc.yaml must be this interpreter, whose environment has the package.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def rerun_after(clone: Path, section: str, key: str, value: object) -> set[str]:
    """Bring the pipeline up to date, set one param, repro again: the stages that ran."""
    run(["dvc", "repro"], clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params[section][key] = value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ran_stages(run(["dvc", "repro"], clone).stdout)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo holding this working tree's files (committed or not) with tiny params."""
    dest = tmp_path_factory.mktemp("clone")
    files = run(["git", "ls-files", "-co", "--exclude-standard"], REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        run(cmd, dest)
    return dest


@pytest.fixture(scope="module")
def first_repro(clone: Path) -> str:
    return run(["dvc", "repro"], clone).stdout


@pytest.mark.slow
def test_repro_writes_every_output(clone: Path, first_repro: str) -> None:
    assert ran_stages(first_repro) == {
        "fetch", "preprocess", "classifier", "train", "generate", "evaluate", "probe"}
    for path in ("models/generator.keras", "models/discriminator.keras",
                 "models/classifier.keras", "data/train/progress.gif",
                 "data/generated/grid.png", "data/generated/interpolation.png"):
        assert (clone / path).stat().st_size > 0, path
    assert len(list((clone / "data/train/grids").glob("epoch_*.png"))) == 2
    samples = np.load(clone / "data/generated/samples.npy")
    assert samples.shape == (64, 16, 16, 1) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1
    metrics = json.loads((clone / "data/metrics.json").read_text())
    for row in (metrics, metrics["floor"], metrics["ceiling_blur"], metrics["ceiling_shuffle"]):
        for key in SUITE:
            assert math.isfinite(row[key]), key
    assert math.isfinite(metrics["classifier_accuracy"]) and metrics["frechet_samples"] == 64
    # Two epochs of a tiny GAN are far from real data; the real-vs-real floor is not.
    assert metrics["frechet_distance"] > metrics["floor"]["frechet_distance"]
    probe = json.loads((clone / "data/probe.json").read_text())
    assert probe["probe_train_size"] == 100
    assert set(probe["probe"]["100"]) == {"discriminator", "random_discriminator", "pixels"}
    assert 0 <= probe["probe_accuracy"] <= 1
    quality = (clone / "data/train/quality.csv").read_text().splitlines()
    assert quality[0] == "epoch,frechet_distance" and len(quality) == 3


@pytest.mark.slow
def test_mlflow_run_holds_params_curves_images_and_model(clone: Path, first_repro: str) -> None:
    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    run_id = json.loads((clone / "data/train/mlflow_run.json").read_text())["run_id"]
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.epochs"] == "2"
    assert mlrun.data.params["train.lr"] == "0.0002"  # the paper arch's, resolved
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    data_md5 = next(o["md5"] for o in lock["stages"]["preprocess"]["outs"]
                    if o["path"].endswith("dataset.npz"))
    tags = mlrun.data.tags
    assert tags["data_md5"] == data_md5 and tags["dataset"] == "mnist-5k"
    head = run(["git", "rev-parse", "HEAD"], clone).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert [m.step for m in client.get_metric_history(run_id, "g_loss")] == [1, 2]
    for name in ("frechet_distance", "floor.kid", "ceiling_blur.precision", "probe_accuracy",
                 "probe.100.random_discriminator"):
        assert name in mlrun.data.metrics, name
    quality = client.get_metric_history(run_id, "epoch_frechet_distance")
    assert sorted(m.step for m in quality) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"train", "generate", "images"} <= artifacts
    # The store lives at the repo root, artifacts beside it.
    assert (clone / "mlruns").is_dir()
    models = client.search_logged_models(experiment_ids=[mlrun.info.experiment_id])
    assert any(m.source_run_id == run_id and m.name == "generator" for m in models)


@pytest.mark.slow
def test_second_repro_runs_nothing(clone: Path, first_repro: str) -> None:
    assert ran_stages(run(["dvc", "repro"], clone).stdout) == set()


@pytest.mark.slow
def test_generate_param_reruns_only_generate_and_evaluate(clone: Path, first_repro: str) -> None:
    assert rerun_after(clone, "generate", "num_samples", 80) == {"generate", "evaluate"}
    assert np.load(clone / "data/generated/samples.npy").shape[0] == 80


@pytest.mark.slow
def test_probe_param_reruns_only_the_probe(clone: Path, first_repro: str) -> None:
    assert rerun_after(clone, "probe", "seed", 1) == {"probe"}


@pytest.mark.slow
def test_bad_param_stops_with_one_line(clone: Path, first_repro: str) -> None:
    bad = clone / "bad.yaml"
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["lr"] = -1
    bad.write_text(yaml.safe_dump(params))
    proc = run([sys.executable, "stages/fetch.py", "--params", str(bad), "--raw", "out/raw",
                "--cache", "out/cache"], clone, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: train.lr = -1 is invalid: must be greater than 0"]
    assert not (clone / "out").exists()
