"""Using a generator outside the pipeline: the pyfunc flavour MLflow serves (and the real
`mlflow models serve` answering a POST), `dcgan export` with its parity check per format,
and `dcgan sample`'s grid, walks and latent arithmetic.

The generator is a small paper-architecture G (16x16x1, z of 8) built under
mixed_bfloat16, as `precision: auto` trains it on a bfloat16 CPU or GPU, with its weights
and batch-norm statistics moved off their initial values so that every layer matters.

Run with `pytest tests/test_serving.py -q` (about 2 minutes on 2 cores; the server test
is marked slow).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image
from test_training import use_scratch_store

from dcgan.core.config import TrainConfig
from dcgan.core.errors import UserError
from dcgan.nets.architectures import Generator
from dcgan.nets.serialisation import load_model, save_model
from dcgan.sampling.images import to_uint8
from dcgan.serving.pyfunc import GeneratorImages
from dcgan.tools import export, generator_ref, sample
from dcgan.tools.cli import main as dcgan
from dcgan.tracking import registry
from dcgan.tracking.runlog import RunLog

LATENT = 8


def bf16_generator() -> keras.Model:
    """A paper G for 16x16x1 computing in bfloat16, weights and BN statistics randomised."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(3)
        g = Generator(TrainConfig(latent_dim=LATENT, g_filters=8), (16, 16, 1))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    g.set_weights([rng.uniform(0.5, 2.0, w.shape).astype(w.dtype) if "variance" in v.path
                   else (w + rng.normal(0, 0.1, w.shape)).astype(w.dtype)
                   for v, w in zip(g.weights, g.get_weights(), strict=True)])
    return g


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("g") / "generator.keras"
    save_model(bf16_generator(), path)
    return path


def z_of(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, LATENT)).astype(np.float32)


# ---------------------------------------------------------------- the pyfunc flavour


def test_pyfunc_answers_pixels_pngs_or_raw_floats(generator_file: Path) -> None:
    g = load_model(generator_file, remedy="")
    z = z_of(5)
    raw = np.asarray(g(z, training=False), dtype=np.float32)
    model = GeneratorImages(g)
    pixels = model.predict(z)
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 16, 16, 1)
    assert np.array_equal(pixels, to_uint8(raw))  # the pipeline's own pixel mapping
    assert np.array_equal(model.predict(z, {"format": "raw"}), raw)
    pngs = model.predict(z, {"format": "png"})
    decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in pngs]
    assert np.array_equal(np.stack(decoded)[..., None], pixels)
    with pytest.raises(MlflowException, match="unknown format 'gif'"):
        model.predict(z, {"format": "gif"})


def test_float32_copy_has_the_weights_and_computes_in_float32(generator_file: Path) -> None:
    g = load_model(generator_file, remedy="")
    copy = generator_ref.float32_copy(g)
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in g.layers}
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(g.get_weights(), copy.get_weights(),
                                                    strict=True))
    z = z_of(8)
    ours, theirs = np.asarray(copy(z, training=False)), np.asarray(g(z, training=False))
    assert 0 < np.abs(ours - theirs).max() < 0.05  # bfloat16's rounding, nothing more


# ---------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_as_the_generator(
        generator_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `mlflow models serve` of the registered version by its alias, as README
    shows it: the pixels it answers equal the generator's own, exactly (same model, same
    CPU kernels); the raw floats too; a z of the wrong width is refused with HTTP 400."""
    store = use_scratch_store(monkeypatch, tmp_path)
    g = load_model(generator_file, remedy="")
    with RunLog.open({}, {"dataset": "digits"}) as log:
        version = registry.log_generator(log.run_id, g, {"dataset": "digits"})
    mlflow.MlflowClient().set_registered_model_alias(registry.REGISTERED_MODEL,
                                                     "best-digits", str(version))
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # uvicorn, as `source .venv/bin/activate` gives
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(tmp_path / "serve.log", "w") as log_file:
        server = subprocess.Popen(
            [f"{bin_dir}/mlflow", "models", "serve", "-m", "models:/dcgan-generator@best-digits",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "server did not answer /ping in 120 s"
                time.sleep(0.5)
        z = z_of(6, seed=7)
        expected = np.asarray(g(z, training=False), dtype=np.float32)
        status, answer = post(f"{url}/invocations", {"inputs": z.tolist()})
        assert status == 200, answer
        assert np.array_equal(np.asarray(answer["predictions"], np.uint8), to_uint8(expected))
        status, answer = post(f"{url}/invocations",
                              {"inputs": z.tolist(), "params": {"format": "raw"}})
        assert status == 200
        assert np.abs(np.asarray(answer["predictions"], np.float32) - expected).max() <= 1e-6
        status, answer = post(f"{url}/invocations", {"inputs": z[:, :5].tolist()})
        assert status == 400
        assert "does not match expected shape (-1, 8)" in answer["message"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["saved_model", "tflite", "onnx"])
def test_export_matches_keras_and_is_logged_to_the_run(
        fmt: str, generator_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Each format, loaded back by its own runtime here (not the exporter's check), gives
    the float32 generator's images within export.TOLERANCE; the run that trained the file
    (found by its md5 tag) gets the export and both parity metrics."""
    use_scratch_store(monkeypatch, tmp_path)
    md5 = hashlib.md5(generator_file.read_bytes()).hexdigest()
    with RunLog.open({}, {"generator_md5": md5}) as log:
        pass
    out = tmp_path / "out" / f"g{export.FORMATS[fmt]}"
    dcgan(["export", str(generator_file), "--format", fmt, "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"wrote {out} ({fmt})" in printed and f"logged to run {log.run_id[:8]}" in printed
    assert "from the float32 copy" in printed and "from the trained generator" in printed
    z = z_of(16, seed=11)
    expected = np.asarray(generator_ref.float32_copy(load_model(generator_file, remedy=""))(
        z, training=False))
    got = export.RUNNERS[fmt](out, z)
    assert got.shape == (16, 16, 16, 1)
    assert np.abs(got - expected).max() <= export.TOLERANCE
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(log.run_id, "exports")] == \
        [f"exports/{out.name}"]
    metrics = client.get_run(log.run_id).data.metrics
    assert metrics[f"export.{fmt}.max_abs_diff_vs_float32"] <= export.TOLERANCE
    assert 0 < metrics[f"export.{fmt}.max_abs_diff_vs_trained"] < 0.05  # bfloat16's rounding
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no staging left


def test_export_reports_both_differences_and_runs_tflite_in_litert(
        generator_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity holds the export's difference from the float32 copy it was made from and,
    apart, from the bfloat16 generator as it runs (as served), each equal to what the export
    gives here; the .tflite file is run by LiteRT's interpreter, not tf.lite's."""
    import ai_edge_litert.interpreter
    import tensorflow as tf

    opened = []

    class Recording(ai_edge_litert.interpreter.Interpreter):
        def __init__(self, model_path: str) -> None:
            opened.append(model_path)
            super().__init__(model_path=model_path)

    def deprecated(*args: object, **kwargs: object) -> None:
        raise AssertionError("tf.lite.Interpreter used")

    monkeypatch.setattr(ai_edge_litert.interpreter, "Interpreter", Recording)
    monkeypatch.setattr(tf.lite, "Interpreter", deprecated)
    g, out = load_model(generator_file, remedy=""), tmp_path / "g.tflite"
    parity = export.export(g, "tflite", out)
    assert [Path(p).name for p in opened] == ["export.tflite"]  # the check, on the staged file
    z = np.random.default_rng(export.PARITY_SEED).standard_normal(
        (export.PARITY_BATCH, LATENT)).astype(np.float32)
    got = export.RUNNERS["tflite"](out, z)
    assert len(opened) == 2
    from_float32 = np.abs(got - np.asarray(generator_ref.float32_copy(g)(z, training=False))).max()
    from_trained = np.abs(got - np.asarray(g(z, training=False), dtype=np.float32)).max()
    assert parity.vs_float32 == pytest.approx(from_float32)
    assert parity.vs_float32 <= export.TOLERANCE
    assert parity.vs_trained == pytest.approx(from_trained)
    assert parity.vs_trained > 10 * export.TOLERANCE  # bfloat16 compute in the trained G
    assert parity.metrics() == {"export.tflite.max_abs_diff_vs_float32": parity.vs_float32,
                                "export.tflite.max_abs_diff_vs_trained": parity.vs_trained}
    assert f"{parity.vs_float32:.2g} from the float32 copy" in parity.summary()
    assert f"{parity.vs_trained:.2g} from the trained generator" in parity.summary()


def test_export_that_misses_parity_writes_nothing_and_keeps_the_old(
        generator_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "g.onnx"
    out.write_bytes(b"an earlier export")
    # The runtime's answer moved by more than the tolerance: a broken conversion.
    real = export.RUNNERS["onnx"]
    monkeypatch.setitem(export.RUNNERS, "onnx", lambda path, z: real(path, z) + 0.01)
    with pytest.raises(UserError, match=r"onnx export does not match .* float32 copy: "
                                        r"max \|diff\| 0.01"):
        export.export(load_model(generator_file, remedy=""), "onnx", out)
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


# ---------------------------------------------------------------- sampling


def test_sample_grid_is_the_generator_on_seeded_z(
        generator_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = load_model(generator_file, remedy="")
    for name in ("a", "b"):
        dcgan(["sample", str(generator_file), "--n", "10", "--seed", "4", "--numbered",
               "--out", str(tmp_path / f"{name}.png"), "--npy", str(tmp_path / f"{name}.npy")])
    assert "wrote" in capsys.readouterr().out
    images = np.load(tmp_path / "a.npy")
    assert np.array_equal(images, np.asarray(g.predict(sample.latents(10, LATENT, 4), verbose=0)))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert Image.open(tmp_path / "a.png").size[0] >= 4 * 16  # 4 columns of 16 px, enlarged
    z_file = tmp_path / "z.npy"
    np.save(z_file, sample.latents(10, LATENT, 4))
    dcgan(["sample", str(generator_file), "--z", str(z_file), "--npy", str(tmp_path / "z.out.npy"),
           "--out", str(tmp_path / "z.png")])
    assert np.array_equal(np.load(tmp_path / "z.out.npy"), images)


def test_sample_walk_goes_from_cell_a_to_cell_b(generator_file: Path, tmp_path: Path) -> None:
    g = load_model(generator_file, remedy="")
    dcgan(["sample", str(generator_file), "--n", "9", "--interpolate", "2,7", "--steps", "5",
           "--out", str(tmp_path / "walk.png"), "--npy", str(tmp_path / "walk.npy")])
    walk, z = np.load(tmp_path / "walk.npy"), sample.latents(9, LATENT, 0)
    ends = np.asarray(g.predict(z[[2, 7]], verbose=0))
    assert walk.shape == (5, 16, 16, 1)
    assert np.abs(walk[[0, -1]] - ends).max() < 1e-2  # slerp's ends are z_A and z_B
    dcgan(["sample", str(generator_file), "--interpolate", "--steps", "4",
           "--out", str(tmp_path / "walks.png"), "--npy", str(tmp_path / "walks.npy")])
    assert np.load(tmp_path / "walks.npy").shape == (8 * 4, 16, 16, 1)


def test_sample_arithmetic_is_the_papers_mean_vector_sum(generator_file: Path,
                                                         tmp_path: Path) -> None:
    g = load_model(generator_file, remedy="")
    dcgan(["sample", str(generator_file), "--n", "12", "--seed", "5", "--arithmetic",
           "0,1,2 - 3,4,5 + 6,7,8", "--npy", str(tmp_path / "a.npy"),
           "--out", str(tmp_path / "a.png")])
    got = np.load(tmp_path / "a.npy")
    z = sample.latents(12, LATENT, 5)
    means = np.stack([z[0:3].mean(0), z[3:6].mean(0), z[6:9].mean(0)])
    result = means[0] - means[1] + means[2]
    cols = sample.ARITHMETIC_VARIANTS
    assert got.shape == (2 * cols, 16, 16, 1)
    assert np.abs(got[:3] - g.predict(means, verbose=0)).max() < 1e-2
    assert np.array_equal(got[3:cols], np.ones((cols - 3, 16, 16, 1), np.float32))  # blank
    assert np.abs(got[cols] - g.predict(result[None], verbose=0)[0]).max() < 1e-2
    assert not np.array_equal(got[cols], got[cols + 1])  # a noisy neighbour


@pytest.mark.parametrize("expression, words", [
    ("0,1,2 - ", "'' is not a list of grid cells"),
    ("0,1;2", "'0,1;2' is not a list of grid cells"),
    ("0,1,x", "'0,1,x' is not a list of grid cells"),
    ("0,1,99", "cell 99 is not in the grid of 12 samples"),
])
def test_arithmetic_expression_errors_name_the_mistake(expression: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        sample.parse_arithmetic(expression, 12)
