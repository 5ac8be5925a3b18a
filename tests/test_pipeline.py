"""End-to-end: the real DVC pipeline in a temporary git clone, on tiny params, tracked in a
real MLflow SQLite store. Slow (about a minute); run with the rest by scripts/test.sh."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from dvc_repo import PATHS, clean_env, commit_all, copy_workspace, free_port, ran_stages, run
from mlflow.tracking import MlflowClient

SUITE = ("frechet_distance", "kid", "kid_std", "precision", "recall", "classifier_score",
         "modes_covered", "mode_kl", "memorisation_ratio")


def rerun_after(clone: Path, section: str, key: str, value: object) -> set[str]:
    """Bring the pipeline up to date, set one param, repro again: the stages that ran."""
    run(["dvc", "repro"], clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params[section][key] = value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ran_stages(run(["dvc", "repro"], clone).stdout)


@pytest.fixture
def clone(pipeline: SimpleNamespace) -> Path:
    return pipeline.path


@pytest.fixture
def first_repro(pipeline: SimpleNamespace) -> str:
    return pipeline.first_repro


@pytest.mark.slow
def test_repro_writes_every_output(clone: Path, first_repro: str) -> None:
    assert ran_stages(first_repro) == {
        "fetch", "preprocess", "classifier", "train", "generate", "evaluate", "probe", "track"}
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
    assert quality[0] == "epoch,frechet_distance,frechet_distance_raw" and len(quality) == 3
    assert metrics["protocol"]["n"] == 64 and metrics["kept"]["epoch"] in (1, 2)


@pytest.mark.slow
def test_mlflow_run_holds_params_curves_images_and_model(pipeline: SimpleNamespace) -> None:
    clone = pipeline.path
    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    md5 = json.loads((clone / "data/train/mlflow_run.json").read_text())["generator_md5"]
    [mlrun] = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id],
                                 filter_string=f"tags.generator_md5 = '{md5}'")
    run_id = mlrun.info.run_id
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.epochs"] == "2"
    assert mlrun.data.params["train.lr"] == "null"  # as params.yaml says; each net's rate:
    assert (mlrun.data.params["train.g_lr"], mlrun.data.params["train.d_lr"]) == ("0.004",
                                                                                 "0.001")
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    data_md5 = next(o["md5"] for o in lock["stages"]["preprocess"]["outs"]
                    if o["path"].endswith("processed/dataset"))
    tags = mlrun.data.tags
    assert tags["data_md5"] == data_md5 and tags["dataset"] == "mnist-5k"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"] == pipeline.commit
    assert mlrun.info.run_name == f"paper-mnist-5k-16px@{pipeline.commit[:7]}"
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
    # Registered; the track stage set the best alias (test_experiments checks which run).
    [version] = client.search_model_versions(f"name = 'dcgan-generator' and run_id = '{run_id}'")
    assert version.tags["dataset"] == "mnist-5k"
    assert client.get_model_version_by_alias("dcgan-generator", "best-mnist-5k").version


@pytest.mark.slow
def test_second_repro_runs_nothing(clone: Path, first_repro: str) -> None:
    assert ran_stages(run(["dvc", "repro"], clone).stdout) == set()


@pytest.mark.slow
def test_generate_param_reruns_only_generate_and_evaluate(clone: Path, first_repro: str) -> None:
    assert rerun_after(clone, "generate", "num_samples", 80) == {"generate", "evaluate",
                                                                 "track"}
    assert np.load(clone / "data/generated/samples.npy").shape[0] == 80


@pytest.mark.slow
def test_probe_param_reruns_only_the_probe(clone: Path, first_repro: str) -> None:
    assert rerun_after(clone, "probe", "seed", 1) == {"probe", "track"}


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


@pytest.mark.slow
def test_a_code_edit_reruns_only_the_stages_that_import_it(clone: Path, first_repro: str) -> None:
    run(["dvc", "repro"], clone)
    edited = {}
    try:
        for name in ("src/dcgan/tools/compare.py", "README.md", "src/dcgan/evaluation/metrics.py"):
            edited[name] = (clone / name).read_text()
            (clone / name).write_text(edited[name] + "# an edit\n")
            status = run(["dvc", "status"], clone).stdout
            print(f"after editing {name}:\n{status}")
            changed = {line.rstrip(":") for line in status.splitlines()
                       if line and not line.startswith((" ", "\t"))}
            if name.endswith("metrics.py"):
                assert changed == {"train", "evaluate"}, status
            else:
                assert status.strip() == "Data and pipelines are up to date.", status
    finally:
        for name, text in edited.items():
            (clone / name).write_text(text)
    assert run(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."


def _store(repo: Path) -> SimpleNamespace:
    """The MLflow run of repo's generator in repo's store, and the version and alias of it."""
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    md5 = json.loads((repo / PATHS["run_file"]).read_text())["generator_md5"]
    [mlrun] = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id],
                                 filter_string=f"tags.generator_md5 = '{md5}'")
    [version] = client.search_model_versions(
        f"name = 'dcgan-generator' and run_id = '{mlrun.info.run_id}'")
    alias = client.get_model_version_by_alias("dcgan-generator", "best-mnist-5k")
    return SimpleNamespace(metrics=mlrun.data.metrics, version=int(version.version),
                           alias=int(alias.version))


@pytest.fixture(scope="module")
def fresh_clone(pipeline: SimpleNamespace,
                tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`origin`: the pipeline's workspace committed to a new git repo (dvc.lock and the
    `cache: false` outs in git), with no MLflow store; `clone`: a `git clone` of it after a
    plain `dvc repro` (`repro`, its stdout). The clone shares origin's DVC cache (as on a
    machine with a shared cache), so that fetch, classifier and generate are checked out
    rather than run; preprocess and train, which write uncached outs, run again and give
    the same bytes."""
    root = tmp_path_factory.mktemp("fresh")
    origin, clone = root / "origin", root / "clone"
    copy_workspace(pipeline.path, origin, mlflow_store=False)
    run(["git", "init", "-q"], origin)
    commit_all(origin, "outputs")
    run(["git", "clone", "-q", str(origin), str(clone)], root)
    run(["dvc", "cache", "dir", "--local", str(origin / ".dvc" / "cache")], clone)
    return SimpleNamespace(origin=origin, clone=clone,
                           repro=run(["dvc", "repro"], clone).stdout)


@pytest.mark.slow
def test_a_plain_repro_in_a_fresh_clone_completes_the_store(fresh_clone: SimpleNamespace) -> None:
    clone, repro = fresh_clone.clone, fresh_clone.repro
    # Evaluate and probe are skipped (their outputs are in git); track runs, as git ignores
    # its output.
    assert "track" in ran_stages(repro), repro
    for stage in ("evaluate", "probe"):
        assert f"Stage '{stage}' didn't change, skipping" in repro.splitlines(), repro
    store = _store(clone)
    metrics = json.loads((clone / PATHS["metrics"]).read_text())
    probe = json.loads((clone / PATHS["probe"]).read_text())
    assert store.metrics["frechet_distance"] == metrics["frechet_distance"]
    assert store.metrics["probe_accuracy"] == probe["probe_accuracy"]
    assert store.version == store.alias == 1
    assert ran_stages(run(["dvc", "repro"], clone).stdout) == set()
    assert run(["git", "status", "--porcelain"], clone).stdout == ""


@pytest.mark.slow
def test_sync_completes_a_store_deleted_under_tracks_output(
        fresh_clone: SimpleNamespace) -> None:
    """Track's output present but no store (deleted, or another MLFLOW_TRACKING_URI): DVC
    cannot see it, and `dcgan sync` is the tool; it writes the same output as the clone's
    track, so dvc.lock stays true. A track that fails under DVC leaves no output (DVC
    deletes it first, and track writes it last), so a later `dvc repro` runs it again."""
    origin, tracked = fresh_clone.origin, PATHS["tracked"]
    made_in_clone = (fresh_clone.clone / tracked).read_bytes()
    assert (origin / tracked).read_bytes() == made_in_clone  # same outputs, same bytes
    assert ran_stages(run(["dvc", "repro"], origin).stdout) == set()
    assert not (origin / "mlflow.db").exists()
    down = clean_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    failed = run(["dvc", "repro", "--force", "--single-item", "track"], origin, check=False,
                 env=down)
    assert failed.returncode != 0
    assert "(MLFLOW_TRACKING_URI) is unreachable" in failed.stdout + failed.stderr
    assert not (origin / tracked).exists()
    run(["dcgan", "sync"], origin)
    assert (origin / tracked).read_bytes() == made_in_clone
    store = _store(origin)
    assert "frechet_distance" in store.metrics and "probe_accuracy" in store.metrics
    assert store.version == store.alias == 1
    assert run(["git", "status", "--porcelain"], origin).stdout == ""
