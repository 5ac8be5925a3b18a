"""Unit tests of dcgan.training.train: `train()` end to end on a tiny processed dataset with a
real MLflow SQLite store, plus its callbacks, input pipeline and checkpoint key.

Run with `pytest tests/test_training.py -q`. The end-to-end run (64 images of 16x16x1,
2 epochs of 4 steps, latent 8) happens once per module; its tests read what it wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from dcgan.core import seeding
from dcgan.core.config import ClassifierConfig, PreprocessConfig, flatten, parse_params
from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5
from dcgan.evaluation.classifier import fit_classifier
from dcgan.ingest import preprocessing
from dcgan.processed import imagestore
from dcgan.processed.batches import SeededBatches
from dcgan.tracking.runfile import read_run_file
from dcgan.tracking.sync import SyncPaths, sync
from dcgan.training.checkpoints import checkpoint_dir
from dcgan.training.commit import GRID_ROWS, EpochCommit, EpochRecord, history_row, write_row
from dcgan.training.guards import CollapseWatch
from dcgan.training.selection import Selection
from dcgan.training.train import TrainOutputs, train

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "preprocess": {"image_size": 16},
    # DiffAugment and LeCam on: the two-run and kill-and-resume tests hold with augmentation's
    # seeded draws and LeCam's moving averages (checkpointed) too.
    "train": {"epochs": 2, "batch_size": 16, "latent_dim": 8, "g_filters": 8, "d_filters": 8,
              "eval_every": 1, "ema_half_life": 64, "keep_best": True,
              "augment": "color,translation,cutout", "lecam": 0.3},
}
METRICS = {"d_loss", "g_loss", "d_real", "d_fake"}  # per epoch, in history.csv and MLflow


def processed_npz(root: Path, n: int = 100) -> Path:
    """Run the real preprocess on n random 16x16 grey images: 20% (20) go to test, 16 to
    validation and the rest (64) to train.

    The same n gives the same file, byte for byte; an existing one is reused."""
    out = root / "processed" / "dataset"
    if out.exists():
        return out
    rng = np.random.default_rng(0)
    raw = root / "raw"
    raw.mkdir(parents=True)
    np.savez(raw / "images.npz", x=rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8),
             y=rng.integers(0, 10, n).astype(np.int64))
    preprocessing.preprocess(PreprocessConfig(image_size=16, test_fraction=0.2, val_size=16),
                             raw, out, root / "processed" / "stats.json")
    return out


def classifier_file(root: Path) -> Path:
    """A real evaluation classifier (one epoch) on `processed_npz(root)`, made once per root."""
    out = root / "models" / "classifier.keras"
    if not out.exists():
        fit_classifier(ClassifierConfig(epochs=1, feature_dim=8), processed_npz(root), out)
    return out


def outputs(root: Path) -> TrainOutputs:
    return TrainOutputs(
        generator=root / "models" / "generator.keras",
        generator_last=root / "models" / "generator_last.keras",
        discriminator=root / "models" / "discriminator.keras",
        history=root / "reports" / "history.csv",
        quality=root / "reports" / "quality.csv",
        grids=root / "reports" / "grids",
        gif=root / "reports" / "progress.gif",
        selection=root / "reports" / "selection.json",
        run_file=root / "models" / "run.json",
        checkpoints=root / "checkpoints",
    )


def use_scratch_store(mp: pytest.MonkeyPatch, root: Path) -> str:
    """cd to `root`, drop the caller's DVC/MLflow settings and point MLflow at a SQLite store
    in `root`; returns its URI."""
    mp.chdir(root)
    for name in ("DVC_ROOT", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        mp.delenv(name, raising=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One real `train()` in a scratch directory, tracked in a SQLite store there."""
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        uri = use_scratch_store(mp, root)
        data_file = processed_npz(root)
        params = parse_params(TINY)
        out = outputs(root)
        result = train(params, data_file, classifier_file(root), out)
        yield SimpleNamespace(root=root, params=params, data_file=data_file, out=out,
                              result=result, client=MlflowClient(uri))


# ---------------------------------------------------------------- train() end to end


@pytest.mark.slow
def test_train_returns_last_logs_and_run_id(trained) -> None:
    result = trained.result
    assert set(result) == METRICS | {"run_id", "weights_sha256"}
    assert all(np.isfinite(result[k]) for k in METRICS)
    # the sync step finds the run by the generator's hash, which its tag holds, and the run
    # file holds all it needs to make the run afresh in another store
    md5 = file_md5(trained.out.generator)
    record = read_run_file(trained.out.run_file)
    run = trained.client.get_run(result["run_id"])
    assert record.generator_md5 == run.data.tags["generator_md5"] == md5
    assert record.params == flatten(trained.params, ("fetch", "preprocess", "train"))
    assert run.data.params == {k: "null" if v is None else str(v)
                               for k, v in record.params.items()}
    assert record.tags == {k: run.data.tags[k] for k in record.tags}
    assert {"dataset", "data_md5", "arch", "precision"} <= set(record.tags)


@pytest.mark.slow
def test_history_csv(trained) -> None:
    history = pd.read_csv(trained.out.history)
    assert history["epoch"].tolist() == [1, 2]
    assert set(history.columns) == METRICS | {"epoch"}
    assert not any(c.startswith("val_") for c in history.columns)
    assert np.isfinite(history[sorted(METRICS)].to_numpy()).all()
    assert history["d_real"].between(0, 1).all() and history["d_fake"].between(0, 1).all()
    assert history.iloc[-1]["g_loss"] == pytest.approx(trained.result["g_loss"])


@pytest.mark.slow
def test_epoch_grids_and_gif(trained) -> None:
    grids = sorted(trained.out.grids.iterdir())
    assert [p.name for p in grids] == ["epoch_0001.png", "epoch_0002.png"]
    side = GRID_ROWS * (16 + 2) + 2
    for path in grids:
        with Image.open(path) as im:
            assert im.size == (side, side) and im.mode == "L"
    assert grids[0].read_bytes() != grids[1].read_bytes()  # G changed between epochs
    with Image.open(trained.out.gif) as gif:
        assert gif.n_frames == 2


@pytest.mark.slow
def test_saved_models_load(trained) -> None:
    generator = keras.saving.load_model(trained.out.generator)
    discriminator = keras.saving.load_model(trained.out.discriminator)
    assert generator.input_shape == (None, 8)
    z = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    images = np.asarray(generator(z))
    assert images.shape == (3, 16, 16, 1)
    assert np.asarray(discriminator(images)).shape == (3, 1)
    assert not list(trained.out.generator.parent.glob(".tmp-*"))  # atomic saves


@pytest.mark.slow
def test_checkpoint_removed_after_success(trained) -> None:
    ckpt = checkpoint_dir(trained.out.checkpoints, trained.params.train,
                          imagestore.dataset_md5(trained.data_file))
    assert not ckpt.exists()


@pytest.mark.slow
def test_mlflow_run(trained) -> None:
    client, run_id = trained.client, trained.result["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "paper-mnist-5k-16px"
    for name in METRICS | {"images_per_sec"}:  # throughput goes to MLflow only
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "images_per_sec"))
    assert run.data.metrics["g_loss"] == pytest.approx(trained.result["g_loss"])
    params = run.data.params
    assert params["train.lr"] == "null" and params["train.beta1"] == "null"  # as given...
    assert params["train.g_lr"] == "0.004" and params["train.d_lr"] == "0.001"  # ...resolved
    assert params["train.g_beta1"] == params["train.d_beta1"] == "0.5"
    assert params["train.epochs"] == "2" and params["preprocess.image_size"] == "16"
    assert {k.split(".")[0] for k in params} == {"fetch", "preprocess", "train"}
    tags = run.data.tags
    assert tags["data_md5"] == imagestore.dataset_md5(trained.data_file)
    assert tags["arch"] == "paper" and tags["dataset"] == "mnist-5k"
    assert tags["precision"] == seeding.resolve_precision("auto")  # the policy it ran under
    assert (tags["distribution"], tags["replicas"], tags["workers"]) == ("none", "1", "1")
    assert 0 < run.data.metrics["train_seconds"] < 600


@pytest.fixture(scope="module")
def synced(trained: SimpleNamespace) -> dict:
    """The sync step on the train outputs alone (no later stage, no dvc.lock)."""
    root = trained.root
    paths = SyncPaths(**{f: getattr(trained.out, f) for f in (
        "run_file", "history", "quality", "grids", "gif", "generator", "discriminator")},
        generated=root / "no-generated", metrics=root / "no-metrics.json",
        probe=root / "no-probe.json", lock=root / "no-dvc.lock")
    with pytest.MonkeyPatch.context() as mp:
        use_scratch_store(mp, root)
        return sync(paths)


@pytest.mark.slow
def test_train_logs_live_and_sync_completes_the_same_run(trained, synced) -> None:
    assert synced["run_id"] == trained.result["run_id"] and synced["created"] is False
    assert trained.client.get_run(synced["run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_generator_registered_with_the_run_tags(trained, synced) -> None:
    [version] = trained.client.search_model_versions(
        f"name = 'dcgan-generator' and run_id = '{trained.result['run_id']}'")
    assert version.tags == {"dataset": "mnist-5k", "arch": "paper",
                            "data_md5": imagestore.dataset_md5(trained.data_file),
                            "precision": seeding.resolve_precision("auto"),
                            "generator_md5": file_md5(trained.out.generator),
                            "distribution": "none", "replicas": "1", "workers": "1"}


@pytest.mark.slow
def test_mlflow_artifacts(trained, synced) -> None:
    client, run_id = trained.client, trained.result["run_id"]
    logged = {a.path for a in client.list_artifacts(run_id, "train")}
    assert logged == {"train/history.csv", "train/quality.csv", "train/progress.gif",
                      "train/discriminator.keras"}
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert images, "the per-epoch grids are logged with mlflow.log_image"
    run = client.get_run(run_id)
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.name for m in models if m.source_run_id == run_id] == ["generator"]


# ---------------------------------------------------------------- quality over training


@pytest.mark.slow
def test_quality_csv_and_step_metric(trained) -> None:
    quality = pd.read_csv(trained.out.quality)
    assert quality.columns.tolist() == ["epoch", "frechet_distance", "frechet_distance_raw"]
    assert quality["epoch"].tolist() == [1, 2]  # eval_every 1
    assert np.isfinite(quality["frechet_distance"]).all()
    assert (quality["frechet_distance"] > 0).all()
    history = trained.client.get_metric_history(trained.result["run_id"],
                                                "epoch_frechet_distance")
    logged = sorted((m.step, m.value) for m in history)
    assert [step for step, _ in logged] == [1, 2]
    assert [v for _, v in logged] == pytest.approx(quality["frechet_distance"].tolist())
    raw = trained.client.get_metric_history(trained.result["run_id"],
                                            "epoch_frechet_distance_raw")
    raw = sorted((m.step, m.value) for m in raw)
    assert [step for step, _ in raw] == [1, 2]
    assert [v for _, v in raw] == pytest.approx(quality["frechet_distance_raw"].tolist())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU features
def test_quality_point_matches_an_independent_computation(trained) -> None:
    # The last point recomputed here from the saved G and classifier: same noise stream,
    # same real subset, FD from scipy's sqrtm instead of the package's eigh route.
    from scipy.linalg import sqrtm

    from dcgan.evaluation.classifier import feature_extractor
    from dcgan.training.selection import QUALITY_SAMPLES

    val_x = imagestore.open_dataset(trained.data_file).val_x  # validation, not test, images
    rng = np.random.default_rng([trained.params.train.seed, 1])
    real = val_x[np.sort(rng.choice(len(val_x), size=min(QUALITY_SAMPLES, len(val_x)),
                                    replace=False))]
    noise = rng.standard_normal((QUALITY_SAMPLES, 8)).astype(np.float32)
    features = feature_extractor(keras.saving.load_model(trained.root / "models" /
                                                         "classifier.keras"))
    fake = keras.saving.load_model(trained.out.generator_last).predict(noise, verbose=0)
    f1, f2 = (features.predict(x, verbose=0).astype(np.float64) for x in (fake, real))
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    diff = f1.mean(0) - f2.mean(0)
    expected = diff @ diff + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    last = pd.read_csv(trained.out.quality)["frechet_distance"].iloc[-1]
    assert last == pytest.approx(expected, rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_quality_every_n_epochs_and_off(trained, tmp_path: Path) -> None:
    # eval_every 2 of 2 epochs: one point; 0: a header-only CSV, the classifier unread,
    # and the same weights as the run that evaluated every epoch (evaluation is passive).
    every2 = {**TINY, "train": {**TINY["train"], "eval_every": 2}}
    out, error = _train_in(tmp_path / "every2", params=every2)
    assert error is None
    assert pd.read_csv(out.quality)["epoch"].tolist() == [2]
    off = {**TINY, "train": {**TINY["train"], "eval_every": 0, "keep_best": False}}
    out, error = _train_in(tmp_path / "off", params=off)
    assert error is None
    assert out.quality.read_text() == "epoch,frechet_distance,frechet_distance_raw\n"
    for a, b in zip(generator_weights(trained.out.generator_last),
                    generator_weights(out.generator), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_classifier_for_other_images_is_rejected(tmp_path: Path) -> None:
    classifier = tmp_path / "models" / "classifier.keras"
    from dcgan.evaluation.classifier import build_classifier
    from dcgan.nets.serialisation import save_model

    save_model(build_classifier((8, 8, 1), 10, 4), classifier)
    out, error = _train_in(tmp_path)
    assert isinstance(error, UserError)
    assert "expects images of shape (8, 8, 1), the data has (16, 16, 1)" in str(error)
    assert not out.run_file.exists()


@pytest.mark.slow
def test_batch_larger_than_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data_file = processed_npz(tmp_path)
    params = parse_params({**TINY, "train": {**TINY["train"], "batch_size": 65}})
    out = outputs(tmp_path)
    with pytest.raises(UserError, match=r"train.batch_size = 65 exceeds the 64 training"):
        train(params, data_file, classifier_file(tmp_path), out)
    assert not out.run_file.exists()  # failed before any MLflow run was opened


@pytest.mark.slow
def test_train_stage_fails_fast_on_an_unreachable_server(tmp_path: Path) -> None:
    """A wrong MLFLOW_TRACKING_URI stops the train stage within seconds, before training."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data_file = processed_npz(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    out = outputs(tmp_path)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in vars(out).items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "train.py"), f"--data={data_file}",
         f"--classifier={tmp_path / 'none.keras'}", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: MLflow tracking server http://127.0.0.1:{port} (MLFLOW_TRACKING_URI) "
        "is unreachable")
    assert "Traceback" not in proc.stderr
    assert elapsed < 60, elapsed  # TF's import included; MLflow's own retries take minutes
    for path in (out.run_file, out.generator, out.history, out.checkpoints, out.grids):
        assert not path.exists(), path


# ---------------------------------------------------------------- reproducibility and resume


def _train_in(root: Path, setup=None, params: dict = TINY
              ) -> tuple[TrainOutputs, BaseException | None]:
    """train() with `params` and the module's data in `root`, its store at root/mlflow.db.

    `setup(out)` runs first (to put an obstacle in the way); returns the outputs and the
    exception train() raised, if any."""
    root.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        use_scratch_store(mp, root)
        data_file = processed_npz(root)
        out = outputs(root)
        if setup:
            setup(out)
        try:
            # With eval_every 0 the classifier is never read: pass a path with nothing there.
            clf = (classifier_file(root) if params["train"].get("eval_every")
                   else root / "no-classifier.keras")
            train(parse_params(params), data_file, clf, out)
        except Exception as err:  # handed to the test to check
            return out, err
    return out, None


def generator_weights(path: Path) -> list[np.ndarray]:
    return keras.saving.load_model(path).get_weights()


@pytest.mark.slow
def test_train_is_reproducible(trained, tmp_path: Path) -> None:
    out, error = _train_in(tmp_path)
    assert error is None
    assert (imagestore.dataset_md5(tmp_path / "processed" / "dataset")
            == imagestore.dataset_md5(trained.data_file))
    for a, b in zip(generator_weights(trained.out.generator), generator_weights(out.generator),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # Every output, byte for byte: DVC records the same md5s.
    for name in ("generator", "generator_last", "discriminator", "history", "quality", "gif",
                 "selection", "run_file"):
        assert (file_md5(getattr(trained.out, name)) ==
                file_md5(getattr(out, name))), name
    assert ([p.read_bytes() for p in sorted(trained.out.grids.iterdir())] ==
            [p.read_bytes() for p in sorted(out.grids.iterdir())])


@pytest.mark.slow
def test_training_never_reads_the_test_images(trained, tmp_path: Path) -> None:
    """Other test images, the same training and validation ones: every training output is
    the same, byte for byte (the scores that choose the kept epoch are on validation)."""
    def other_test_images(out: TrainOutputs) -> None:
        data = tmp_path / "processed" / "dataset"
        pixels = imagestore.ImageArray(data / "test_x.npy").pixels(slice(None))
        writer = imagestore.NpyWriter(data / "test_x.npy", pixels.shape[1:])
        writer.append(255 - pixels)
        writer.close()
        np.save(data / "test_y.npy", np.full(len(pixels), -1, np.int64))

    out, error = _train_in(tmp_path, other_test_images)
    assert error is None
    assert (imagestore.dataset_md5(tmp_path / "processed" / "dataset")
            != imagestore.dataset_md5(trained.data_file))
    for name in ("generator", "generator_last", "discriminator", "history", "quality"):
        assert file_md5(getattr(trained.out, name)) == file_md5(getattr(out, name)), name
    selection = json.loads(out.selection.read_text())
    assert selection == json.loads(trained.out.selection.read_text())
    assert selection["protocol"]["reference"] == "validation"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A run that crashes at the end of epoch 2, before that epoch's checkpoint, then reruns.

    The crash is real: a directory sits where epoch 2's grid PNG goes, so its rename fails."""
    root = tmp_path_factory.mktemp("resume")
    ckpt = checkpoint_dir(outputs(root).checkpoints, parse_params(TINY).train,
                          imagestore.dataset_md5(processed_npz(root)))

    def block_grid(out: TrainOutputs) -> None:
        (ckpt / out.grids.name / "epoch_0002.png").mkdir(parents=True)

    out, crash = _train_in(root, block_grid)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [crashed] = client.search_runs(client.get_experiment_by_name("dcgan").experiment_id)
    after_crash = SimpleNamespace(
        ckpt_files=sorted(p.name for p in ckpt.iterdir()) if ckpt.exists() else [],
        history=pd.read_csv(ckpt / out.history.name)["epoch"].tolist(),
        outputs=sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and p.parts[len(root.parts)] in ("models", "reports")),
        run_id=crashed.info.run_id, status=crashed.info.status,
    )
    (ckpt / out.grids.name / "epoch_0002.png").rmdir()
    # And as if a kill had landed while Keras rewrote its epoch file (truncated, not written).
    (ckpt / "training_metadata.json").write_text("")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, error = _train_in(root)
    return SimpleNamespace(root=root, out=out, crash=crash, error=error, ckpt=ckpt,
                           after_crash=after_crash, warnings=[str(w.message) for w in caught],
                           client=client)


@pytest.mark.slow
def test_interrupted_run_resumes_at_the_next_epoch(resumed) -> None:
    assert isinstance(resumed.crash, OSError)
    assert {"latest.weights.h5", "run.json", "history.csv", "grids"} <= set(
        resumed.after_crash.ckpt_files)
    assert resumed.after_crash.history == [1]  # epoch 2 failed at its grid, before its row
    # The failed run changed no output: its files wait in the checkpoint.
    assert resumed.after_crash.outputs == ["models/classifier.keras"]
    assert resumed.after_crash.status == "FAILED"
    assert resumed.error is None
    assert pd.read_csv(resumed.out.history)["epoch"].tolist() == [1, 2]
    assert pd.read_csv(resumed.out.quality)["epoch"].tolist() == [1, 2]
    assert [p.name for p in sorted(resumed.out.grids.iterdir())] == [
        "epoch_0001.png", "epoch_0002.png"]
    assert not resumed.ckpt.exists()
    with Image.open(resumed.out.gif) as gif:
        assert gif.n_frames == 2


@pytest.mark.slow
def test_resumed_run_continues_its_mlflow_run(resumed) -> None:
    client, run_id = resumed.client, resumed.after_crash.run_id
    assert len(client.search_runs(client.get_experiment_by_name("dcgan").experiment_id)) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert file_md5(resumed.out.generator) in resumed.out.run_file.read_text()
    # Epoch 2 ran twice (crash, then resume) but is logged once; nothing is missing.
    for key in ("g_loss", "d_loss", "images_per_sec", "epoch_frechet_distance"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2], key
    images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [1, 2]


@pytest.mark.slow
def test_resume_restores_without_skipped_variables(resumed) -> None:
    assert resumed.error is None
    assert not [w for w in resumed.warnings if "Skipping variable loading" in w]


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(trained, resumed) -> None:
    # Weights (G's moving average too), Adam state, RNG states, data order and the best
    # epoch so far all continue: the same bytes.
    for name in ("generator", "generator_last", "discriminator", "history", "quality", "gif",
                 "selection"):
        assert (file_md5(getattr(trained.out, name)) ==
                file_md5(getattr(resumed.out, name))), name


# ---------------------------------------------------------------- parts


def test_checkpoint_dir_keys_on_train_params_and_data() -> None:
    cfg = parse_params(TINY).train
    root = Path("ckpt")
    base = checkpoint_dir(root, cfg, "a" * 32)
    assert base.parent == root and len(base.name) == 16
    assert checkpoint_dir(root, parse_params(TINY).train, "a" * 32) == base  # stable
    assert checkpoint_dir(root, cfg, "b" * 32) != base
    other = "float32" if seeding.resolve_precision("auto") == "mixed_bfloat16" else \
        "mixed_bfloat16"
    for change in ({"lr": 0.001}, {"seed": 1}, {"batch_size": 32}, {"arch": "tutorial"},
                   {"precision": other}):
        assert checkpoint_dir(root, cfg.model_copy(update=change), "a" * 32) != base, change
    # `auto` keys as the policy it resolves to here: a checkpoint of one resumes the other.
    resolved = cfg.model_copy(update={"precision": seeding.resolve_precision("auto")})
    assert checkpoint_dir(root, resolved, "a" * 32) == base


class _Recorder:
    """A stand-in for each part of the commit, noting the order of the calls."""

    def __init__(self, calls: list, name: str, check=None):
        self.calls, self.name, self.check = calls, name, check

    def __getattr__(self, hook: str):
        def call(*args, **kwargs):
            if self.check:
                self.check(hook)
            self.calls.append((self.name, hook))
            return 3.14159265 if hook == "score" else None
        return call


def test_epoch_commit_order_grid_guard_history_quality_log_checkpoint(tmp_path: Path) -> None:
    calls: list = []
    progress = SimpleNamespace(history=tmp_path / "history.csv", quality=tmp_path / "q.csv",
                               grids=tmp_path)

    def grid_first(hook: str) -> None:  # the guard vets the epoch once its grid is drawn
        if hook == "on_epoch_end":
            assert (tmp_path / "epoch_0001.png").exists()
            assert not progress.history.exists()

    class Run(_Recorder):
        def metrics(self, metrics: dict, step: int | None = None) -> int:
            calls.append(("log", tuple(metrics)))
            return len(metrics)

    record = EpochRecord(progress, Run(calls, "log"), np.zeros((GRID_ROWS**2, 4), np.float32),
                         CollapseWatch(0, 0.05), images_per_epoch=100,
                         selection=Selection(keep_best=False, patience=0),
                         quality=lambda g: calls.append(("quality", "score")) or 3.14159265,
                         eval_every=1)
    commit = EpochCommit(_Recorder(calls, "checkpoint"), _Recorder(calls, "guard", grid_first),
                         record)
    generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16),
                                  keras.layers.Reshape((4, 4, 1))])
    commit.set_model(SimpleNamespace(generator=generator, sampler=generator, average=None))
    commit.set_params({"epochs": 2})
    commit.on_epoch_begin(0)
    time.sleep(0.05)
    calls.clear()
    commit.on_epoch_end(0, {"g_loss": 1.23456789, "d_loss": 2.0})
    assert [c[0] for c in calls] == ["guard", "quality", "log", "log", "log", "log",
                                     "checkpoint"]
    assert calls[2] == ("log", ("d_loss", "g_loss")) and calls[3] == ("log", ("images_per_sec",))
    assert progress.history.read_text().splitlines() == ["epoch,d_loss,g_loss", "1,2.0,1.23457"]
    assert progress.quality.read_text().splitlines() == [
        "epoch,frechet_distance,frechet_distance_raw", "1,3.14159,3.14159"]


def test_history_rows_start_fresh_append_and_round(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    write_row(path, history_row(0, {"g_loss": 1.0, "d_loss": 2.0}), fresh=True)
    write_row(path, history_row(1, {"g_loss": 3.0, "d_loss": 4.0}), fresh=False)
    assert path.read_text().splitlines() == ["epoch,d_loss,g_loss", "1,2.0,1.0", "2,4.0,3.0"]
    write_row(path, history_row(2, {"g_loss": 5.0, "d_loss": 6.0}), fresh=False)  # resumed
    assert len(path.read_text().splitlines()) == 4
    write_row(path, history_row(0, {"g_loss": 7.0, "d_loss": 1 / 3}), fresh=True)  # new run
    assert path.read_text().splitlines() == ["epoch,d_loss,g_loss", "1,0.333333,7.0"]


def test_seeded_batches_depend_on_seed_and_epoch_only() -> None:
    images = np.arange(70, dtype=np.float32).reshape(70, 1, 1, 1)

    def epoch(batches: SeededBatches, number: int) -> np.ndarray:
        out = [b.numpy().ravel() for b in batches.epoch(number)]
        assert [len(b) for b in out] == [16] * 4  # full batches; 6 images left out
        return np.concatenate(out)

    first = SeededBatches(images, 16, seed=42)
    orders = [epoch(first, e) for e in range(3)]
    assert all(len(set(o)) == 64 for o in orders)  # no image twice in an epoch
    assert not np.array_equal(orders[0], np.arange(64))  # shuffled
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch
    # fit() reads one stream from its first epoch on: epoch 2's batches follow epoch 1's,
    # and a later on_epoch_begin does not move it.
    first.set_params({"steps": first.steps})  # what fit() passes with steps_per_epoch
    first.on_train_begin()
    first.on_epoch_begin(1)
    first.on_epoch_begin(2)
    stream = np.concatenate([b.numpy().ravel() for b in first.dataset.take(8)])
    np.testing.assert_array_equal(stream, np.concatenate(orders[1:3]))
    # A new process resuming at epoch 2 sees epoch 2's batches, not epoch 0's.
    np.testing.assert_array_equal(epoch(SeededBatches(images, 16, seed=42), 2), orders[2])
    assert not np.array_equal(epoch(SeededBatches(images, 16, seed=1), 0), orders[0])
    with pytest.raises(UserError, match="batch_size = 16 exceeds the 15"):
        SeededBatches(images[:15], 16, seed=42)
    # The stream never ends: fit() without steps_per_epoch is refused, not left running.
    model = keras.Sequential([keras.Input((1, 1, 1)), keras.layers.Flatten()])
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="steps_per_epoch=batches.steps"):
        model.fit(first.dataset.map(lambda x: (x, x[:, 0, 0])), callbacks=[first],
                  shuffle=False, verbose=0)


def test_seeded_batches_from_disk_are_those_from_memory(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (70, 4, 4, 3), dtype=np.uint8)
    writer = imagestore.NpyWriter(tmp_path / "x.npy", pixels.shape[1:])
    writer.append(pixels)
    writer.close()
    disk = SeededBatches(imagestore.ImageArray(tmp_path / "x.npy"), 16, seed=5)
    memory = SeededBatches(pixels, 16, seed=5)
    # The same static shape (16, 4, 4, 3): a step traced with an unknown batch dimension
    # ran 5-8% slower at 64 px than the same step on batches from memory.
    assert disk.dataset.element_spec == memory.dataset.element_spec
    assert disk.dataset.element_spec.shape == (16, 4, 4, 3)
    for epoch in (0, 3):
        for a, b in zip(disk.epoch(epoch), memory.epoch(epoch), strict=True):
            assert np.array_equal(a.numpy().view(np.uint32), b.numpy().view(np.uint32))
    ragged = SeededBatches(imagestore.ImageArray(tmp_path / "x.npy"), 16, seed=5,
                           drop_remainder=False)
    assert ragged.dataset.element_spec.shape == (None, 4, 4, 3)
    assert [len(b) for b in ragged.epoch(0)] == [16, 16, 16, 16, 6]
