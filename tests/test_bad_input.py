"""Bad input, stage by stage: every case runs one stage script on one mistake and checks
that it fails as README promises: ONE line `error: ...` that names the key or file,
exit status 2, no traceback, nothing written and nothing that was there lost.

Run with `pytest tests/test_bad_input.py -q` (about a minute on 2 cores; `-s` prints
each error line). Each stage runs with the command line dvc.yaml gives it. Most cases
call the stage's `main()` in this process under `stage_main`; a few run
`python stages/<stage>.py` as a real process (a YAML syntax error, an unreachable
MLflow server, a full disk, a corrupt image), where TensorFlow's C++ start-up log
lines, which also go to stderr, are set aside before the one-line check.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image
from test_training import TINY, processed_npz, use_scratch_store

from dcgan.core.config import parse_params
from dcgan.evaluation.classifier import build_classifier
from dcgan.ingest import imagefiles, manifest
from dcgan.nets.model import build_gan
from dcgan.nets.serialisation import save_model
from dcgan.runtime.stage import stage_main

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PATHS = DVC["vars"][0]["paths"]
# Valid tiny params that every case spoils in one place; eval_every 0: train needs no
# classifier.
BASE = {**TINY, "train": {**TINY["train"], "eval_every": 0, "keep_best": False}}
# What TensorFlow and absl print to stderr from C++ (I0000/W0000/E0000 ...), and the
# second line of TF's CPU-feature notice.
# Log lines a real process prints before the error: TensorFlow's C++ start-up notes, and
# MLflow's INFO lines when it creates a new store. They are not errors, so set aside.
TF_LOG = re.compile(r"[IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog"
                    r"|To enable the following instructions:"
                    r"|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.")
# The MLflow store is not an output; fetch's download cache is not a DVC out (and the
# test checks on its own that no bad download stays there).
UNWATCHED = {"mlflow.db", "mlflow.db.lock", "mlruns", "__pycache__"}
RAW_NPZ = f"{PATHS['raw']}/images.npz"  # fetch's output for array datasets (data.py)


def _sub(text: str) -> str:
    return re.sub(r"\$\{paths\.(\w+)\}", lambda m: PATHS[m[1]], text)


def stage_argv(stage: str) -> list[str]:
    """The stage's arguments as dvc.yaml's cmd writes them, after `python stages/x.py`."""
    return shlex.split(_sub(DVC["stages"][stage]["cmd"]))[2:]


def stage_outs(stage: str) -> list[str]:
    return [_sub(next(iter(out)) if isinstance(out, dict) else out)
            for out in DVC["stages"][stage].get("outs", [])]


@functools.cache
def stage_module(stage: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"stage_{stage}", REPO / "stages" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content's sha256 ("dir" for folders)."""
    listing = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if UNWATCHED.isdisjoint(rel.parts) and not rel.is_relative_to(PATHS["cache"]):
            listing[str(rel)] = ("dir" if path.is_dir() else
                                 hashlib.sha256(path.read_bytes()).hexdigest())
    return listing


def leave_previous_outputs(root: Path, stage: str) -> None:
    """The stage's outs from an earlier run: each file out, and a file in each folder out."""
    inside = {PATHS["raw"]: "images.npz", PATHS["generated"]: "samples.npy"}
    for out in stage_outs(stage):
        target = root / out / inside.get(out, "earlier.bin") if not Path(out).suffix else root / out
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"from an earlier run: " + out.encode())


# ---------------------------------------------------------------- inputs the cases use


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Valid inputs, made once: the processed data (16x16x1), a generator for it, a
    discriminator for RGB images, and an (untrained) evaluation classifier."""
    root = tmp_path_factory.mktemp("assets")
    cfg = parse_params(BASE).train
    grey, rgb = build_gan(cfg, (16, 16, 1)), build_gan(cfg, (16, 16, 3))
    found = SimpleNamespace(data=processed_npz(root), generator=root / "g.keras",
                            rgb_discriminator=root / "d3.keras", classifier=root / "c.keras")
    save_model(grey.generator, found.generator)
    save_model(rgb.discriminator, found.rgb_discriminator)
    save_model(build_classifier((16, 16, 1), 10, 8), found.classifier)
    return found


def put(ctx: SimpleNamespace, key: str, content: Path | bytes) -> Path:
    """Write an input where dvc.yaml's path `key` says: a copy of a file or directory, or
    bytes."""
    path = ctx.root / PATHS.get(key, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path) and content.is_dir():
        shutil.copytree(content, path)
    elif isinstance(content, Path):
        shutil.copyfile(content, path)
    else:
        path.write_bytes(content)
    return path


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class Payload:
    """Unpickling this runs `touch pwned`: what a malicious object array would do."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the case setups


def folder(*files: str, exists: bool = True,
           fetched: bool = False) -> Callable[[SimpleNamespace], None]:
    """fetch.folder = photos/, holding `files`: good*.png are PNGs, any other a fake one;
    `fetched`: with fetch's manifest of it in data/raw, as preprocess finds it."""
    def setup(ctx: SimpleNamespace) -> None:
        ctx.params["fetch"] = {"dataset": "folder", "folder": "photos"}
        if exists:
            (ctx.root / "photos").mkdir()
        for name in files:
            if name.startswith("good"):
                Image.new("L", (16, 16), 128).save(ctx.root / "photos" / name)
            else:
                (ctx.root / "photos" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
        if fetched:
            listing = imagefiles.list_images(ctx.root / "photos")
            manifest.write_manifest(listing, imagefiles.content_md5(listing),
                                      ctx.root / PATHS["raw"] / "manifest.json")
    return setup


def checksum_mismatch(ctx: SimpleNamespace) -> None:
    """A mirror (conftest's local server) whose mnist.npz is not the canonical file."""
    server = ctx.request.getfixturevalue("http_server")
    (server.root / "mnist.npz").write_bytes(npz_bytes(x_train=np.zeros((2, 28, 28), np.uint8)))
    ctx.params["fetch"] = {"dataset": "mnist", "mirror": server.url}


def unreachable_mirror(ctx: SimpleNamespace) -> None:
    ctx.params["fetch"] = {"dataset": "mnist", "mirror": f"http://127.0.0.1:{closed_port()}/"}


def npz_at(key: str, make: Callable[[], bytes]) -> Callable[[SimpleNamespace], None]:
    """The setup that writes the npz `make` gives at dvc.yaml's path `key` (or at `key`)."""
    return lambda ctx: put(ctx, key, make())


def raw_bytes() -> bytes:
    return npz_bytes(x=np.zeros((8, 16, 16, 1), np.uint8), y=np.arange(8))


def pickled(key: str, *others: str) -> Callable[[], bytes]:
    """An npz whose `key` is an object array that runs code when unpickled."""
    return lambda: npz_bytes(**{key: np.array([Payload()], dtype=object)},
                             **{k: np.zeros(2) for k in others})


def truncated(make: Callable[[], bytes]) -> Callable[[], bytes]:
    """The first half of the file `make` gives: what a killed copy leaves."""
    return lambda: (whole := make())[:len(whole) // 2]


def damaged_data(kind: str) -> Callable[[SimpleNamespace], None]:
    """The valid processed dataset with train_x.npy cut in half (what a killed copy leaves),
    or with pickled (object) labels."""
    def setup(ctx: SimpleNamespace) -> None:
        path = put(ctx, "data", ctx.assets.data)
        if kind == "truncated":
            whole = (path / "train_x.npy").read_bytes()
            (path / "train_x.npy").write_bytes(whole[:len(whole) // 2])
        else:
            np.save(path / "train_y.npy", np.array([Payload()] * 64, dtype=object),
                    allow_pickle=True)
    return setup


def model_file(kind: str) -> Callable[[SimpleNamespace], None]:
    """models/generator.keras: random bytes, or the first half of a real .keras zip."""
    def setup(ctx: SimpleNamespace) -> None:
        real = ctx.assets.generator.read_bytes()
        put(ctx, "generator", os.urandom(4096) if kind == "random" else real[:len(real) // 2])
    return setup


def valid(*keys: str) -> Callable[[SimpleNamespace], None]:
    """The setup that puts the valid assets `keys` (data, generator) where dvc.yaml says."""
    def setup(ctx: SimpleNamespace) -> None:
        for key in keys:
            put(ctx, key, getattr(ctx.assets, key))
    return setup


def run_file_only(ctx: SimpleNamespace) -> None:
    """A valid run file, and none of the other train outputs (a clone that has not pulled)."""
    record = {"generator_md5": "0" * 32, "params": {}, "tags": {"dataset": "mnist-5k"}}
    put(ctx, "run_file", json.dumps(record).encode())


def samples(channels: int, *keys: str, selection: bool = True
            ) -> Callable[[SimpleNamespace], None]:
    """16 generated images with `channels` channels, the data, the valid assets `keys`
    and (with `selection`) train's selection.json."""
    def setup(ctx: SimpleNamespace) -> None:
        valid("data", *keys)(ctx)
        buf = io.BytesIO()
        np.save(buf, np.zeros((16, 16, 16, channels), np.float32))
        put(ctx, f"{PATHS['generated']}/samples.npy", buf.getvalue())
        if selection:
            put(ctx, "selection", json.dumps({"generator": "raw", "kept": "last", "epoch": 2,
                                              "frechet_distance": None}).encode())
    return setup


def rgb_discriminator(ctx: SimpleNamespace) -> None:
    valid("data")(ctx)
    put(ctx, "discriminator", ctx.assets.rgb_discriminator)


def unreachable_tracking(ctx: SimpleNamespace) -> None:
    valid("data")(ctx)
    ctx.env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{closed_port()}"


def full_disk(ctx: SimpleNamespace) -> None:
    """Mount a 64 kB tmpfs on the checkpoints folder, in a user and mount namespace of the
    stage's own (no root needed): the first checkpoint, G's and D's weights and Adam state
    (about 130 kB here), cannot fit."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux `unshare` to mount a tiny tmpfs without root")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"user namespaces are unavailable here: {probe.stderr.strip()}")
    valid("data")(ctx)
    (ctx.root / PATHS["checkpoints"]).mkdir(parents=True)
    mount = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(PATHS['checkpoints'])}"
    ctx.prefix = ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh"]


# ---------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    stage: str
    words: tuple[str, ...]  # what the error line must contain
    untrue: tuple[str, ...] = ()  # what it must not say
    params: dict | str | None = field(default_factory=dict)  # on BASE; text: the file; None
    setup: Callable[[SimpleNamespace], None] | None = None
    real_process: bool = False
    may_change: tuple[str, ...] = ()  # outputs a failed run may leave (prefixes)


def param(name: str, stage: str, *words: str, marks=(), **kwargs) -> object:
    return pytest.param(Case(stage, words, **kwargs), id=name, marks=marks)


PARAMS_CASES = [
    param("params-unknown-key", "train", "train.learning_rate is not a known key",
         "allowed: arch, epochs", params={"train": {"learning_rate": 0.1}}),
    param("params-misspelt-section-trian", "fetch", "trian is not a known key",
         "allowed: fetch, preprocess, classifier, train", params={"trian": {"epochs": 2}}),
    param("params-misspelt-key-train-epoch", "generate", "train.epoch is not a known key",
         "epochs", params={"train": {"epoch": 3}}),
    param("params-section-not-a-mapping", "classifier", "train = 5 is invalid",
         "valid dictionary of train's keys", params={"train": 5}),
    param("params-string-for-int", "train", "train.epochs = '10' is invalid",
         "valid integer", params={"train": {"epochs": "10"}}),
    param("params-list-for-float", "train", "train.lr = [0.001] is invalid", "valid number",
         params={"train": {"lr": [0.001]}}),
    param("params-epochs-zero", "classifier", "classifier.epochs = 0 is invalid",
         "greater than or equal to 1", params={"classifier": {"epochs": 0}}),
    param("params-batch-size-negative", "train", "train.batch_size = -8 is invalid",
         "greater than or equal to 1", params={"train": {"batch_size": -8}}),
    param("params-image-size-zero", "preprocess", "preprocess.image_size = 0 is invalid",
         "greater than or equal to 8", params={"preprocess": {"image_size": 0}}),
    param("params-latent-dim-zero", "probe", "train.latent_dim = 0 is invalid",
         "greater than or equal to 1", params={"train": {"latent_dim": 0}}),
    param("params-num-samples-zero", "generate", "generate.num_samples = 0 is invalid",
         "greater than or equal to 1", params={"generate": {"num_samples": 0}}),
    param("params-image-size-not-paper-arch", "preprocess", "preprocess.image_size = 30",
         "train.arch 'paper'", "s * 2**n with s in 4..7",
         params={"preprocess": {"image_size": 30}}),
    param("params-image-size-not-tutorial-arch", "train", "preprocess.image_size = 30",
         "train.arch 'tutorial'", "multiple of 4",
         params={"preprocess": {"image_size": 30}, "train": {"arch": "tutorial"}}),
    param("params-unknown-dataset", "fetch", "fetch.dataset = 'imagenet' is invalid",
         "'mnist-5k'", "'folder'", params={"fetch": {"dataset": "imagenet"}}),
    param("params-unknown-arch", "train", "train.arch = 'resnet' is invalid",
         "'paper' or 'tutorial'", params={"train": {"arch": "resnet"}}),
    param("params-unknown-augmentation", "train", "train.augment = 'flip,cutout' is invalid",
         "'flip' is not an augmentation", "color, translation, cutout",
         params={"train": {"augment": "flip,cutout"}}),
    param("params-channels-not-1-or-3", "preprocess", "preprocess.channels = 2 is invalid",
         "1 or 3", params={"preprocess": {"channels": 2}}),
    param("params-ema-half-life-negative", "train", "train.ema_half_life = -1 is invalid",
         "greater than or equal to 0", params={"train": {"ema_half_life": -1}}),
    param("params-ema-rampup-above-1", "train", "train.ema_rampup = 2.0 is invalid",
         "less than or equal to 1", params={"train": {"ema_rampup": 2.0}}),
    param("params-early-stop-patience-negative", "train",
         "train.early_stop_patience = -3 is invalid", "greater than or equal to 0",
         params={"train": {"early_stop_patience": -3}}),
    param("params-d-lr-zero", "train", "train.d_lr = 0.0 is invalid", "greater than 0",
         params={"train": {"d_lr": 0.0}}),
    param("params-g-lr-above-1", "train", "train.g_lr = 3.0 is invalid",
         "less than or equal to 1", params={"train": {"g_lr": 3.0}}),
    param("params-g-beta1-1", "train", "train.g_beta1 = 1.0 is invalid", "less than 1",
         params={"train": {"g_beta1": 1.0}}),
    param("params-keep-best-without-evaluations", "train",
         "train.keep_best needs train.eval_every > 0", "set eval_every",
         params={"train": {"keep_best": True, "eval_every": 0}}),
    param("params-early-stop-without-evaluations", "train",
         "train.early_stop_patience needs train.eval_every > 0",
         params={"train": {"early_stop_patience": 2, "eval_every": 0}}),
    param("params-yaml-syntax-error", "generate", "params.yaml: not valid YAML at line 3",
         "fix the syntax", params="train:\n  epochs: 2\n   batch_size: 16\n",
         real_process=True),
    param("params-file-missing", "evaluate", "params.yaml: not found", "--params", params=None),
    param("params-yaml-python-tag", "probe", "!!python/object/apply:os.system",
         "is not allowed", params='fetch: !!python/object/apply:os.system ["touch pwned"]\n'),
]

DATA_CASES = [
    param("fetch-folder-missing", "fetch", "fetch.folder: photos does not exist",
         setup=folder(exists=False)),
    param("fetch-folder-empty", "fetch", "fetch.folder: photos holds no image files",
         setup=folder()),
    param("preprocess-folder-corrupt-png", "preprocess", "1 of 3 images in ",
         "photos cannot be read",
         "bad.png: not a readable image", "fix or delete", "preprocess.skip_unreadable",
         params={"preprocess": {"val_size": 1}},  # of 3 images
         setup=folder("good1.png", "good2.png", "bad.png", fetched=True), real_process=True),
    param("fetch-checksum-mismatch", "fetch", "mnist.npz from http://127.0.0.1:",
         "does not match sha256", "removed", "fetch.mirror", setup=checksum_mismatch),
    param("fetch-mirror-unreachable", "fetch", "could not download mnist.npz",
         "Connection refused", "fetch.mirror", setup=unreachable_mirror),
    param("preprocess-raw-missing", "preprocess", f"{PATHS['raw']}: holds neither",
         "run the fetch stage"),
    param("preprocess-raw-npz-truncated", "preprocess", RAW_NPZ,
         "truncated or corrupt", "fetch", setup=npz_at(RAW_NPZ, truncated(raw_bytes))),
    param("preprocess-raw-npz-pickled", "preprocess", RAW_NPZ,
         "pickled (object) arrays", setup=npz_at(RAW_NPZ, pickled("x", "y"))),
    param("classifier-data-missing", "classifier", f"{PATHS['data']}: not found",
         "run the preprocess stage"),
    param("classifier-data-truncated", "classifier", f"{PATHS['data']}/train_x.npy",
         "truncated or padded", "rerun preprocess", setup=damaged_data("truncated")),
    param("train-data-labels-pickled", "train", f"{PATHS['data']}/train_y.npy",
         "not a label array", "rerun preprocess", setup=damaged_data("pickled")),
    param("evaluate-samples-channels-mismatch", "evaluate", "samples.npy", "(16, 16, 3)",
         "(16, 16, 1)", setup=samples(3, "classifier")),
    param("probe-discriminator-channels-mismatch", "probe", PATHS["discriminator"],
         "(16, 16, 3)", "(16, 16, 1)", "retrain", setup=rgb_discriminator),
]

MODEL_CASES = [
    param("generate-generator-missing", "generate", f"{PATHS['generator']}: no model here",
         "run the train stage"),
    param("generate-generator-random-bytes", "generate", PATHS["generator"],
         "cannot be loaded as a Keras model", "run the train stage", untrue=("not found",),
         setup=model_file("random")),
    param("generate-generator-truncated-zip", "generate", PATHS["generator"],
         "cannot be loaded as a Keras model", "run the train stage", untrue=("not found",),
         setup=model_file("truncated")),
    param("track-run-file-missing", "track", f"{PATHS['run_file']}: not a run file",
         "run the train stage", setup=valid("generator")),
    param("track-train-outputs-missing", "track", f"sync: {PATHS['history']}, ",
         f"{PATHS['generator']}", "missing; run `dvc pull`", setup=run_file_only),
    param("evaluate-classifier-missing", "evaluate", f"{PATHS['classifier']}: no model here",
         "run the classifier stage", setup=samples(1)),
    param("evaluate-selection-missing", "evaluate", f"{PATHS['selection']}: cannot read it",
         "run the train stage", setup=samples(1, "classifier", selection=False)),
    param("probe-discriminator-missing", "probe", f"{PATHS['discriminator']}: no model here",
         "run the train stage", setup=valid("data")),
]

# Real train processes, which start TensorFlow before they fail: slow (seconds each).
TRAIN_CASES = [
    param("train-mlflow-server-unreachable", "train", "MLflow tracking server http://127.0.0.1:",
         "(MLFLOW_TRACKING_URI) is unreachable", "Connection refused", "unset",
         setup=unreachable_tracking, real_process=True, marks=pytest.mark.slow),
    # Per-epoch files wait in the checkpoint until training succeeds: no output changes.
    param("train-disk-full-at-checkpoint", "train", PATHS["checkpoints"],
         "No space left on device", "free space there", setup=full_disk, real_process=True,
         marks=pytest.mark.slow),
]


# ---------------------------------------------------------------- running a case


def run_in_process(case: Case, capsys: pytest.CaptureFixture,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", [f"stages/{case.stage}.py", *stage_argv(case.stage)])
    main = stage_module(case.stage).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        stage_main(main)
    return exit_info.value.code, capsys.readouterr().err


def run_process(case: Case, ctx: SimpleNamespace) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{ctx.root / 'mlflow.db'}", **ctx.env})
    command = [*ctx.prefix, sys.executable, str(REPO / "stages" / f"{case.stage}.py"),
               *stage_argv(case.stage)]
    proc = subprocess.run(command, cwd=ctx.root, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr


def the_error_line(stderr: str, words: tuple[str, ...], real_process: bool) -> str:
    """The one line on stderr (a real process's TF C++ log lines set aside); checks it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if not (real_process and TF_LOG.match(line))]
    if real_process:
        print("set aside:", *[line for line in lines if line not in ours], sep="\n  ")
    print("error line:", *ours, sep="\n  ")
    assert "Traceback" not in stderr
    assert len(ours) == 1, ours
    [line] = ours
    assert line.startswith("error: ")
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


@pytest.mark.parametrize("case", PARAMS_CASES + DATA_CASES + MODEL_CASES + TRAIN_CASES)
def test_bad_input_fails_in_one_line_and_writes_nothing(
        case: Case, tmp_path: Path, assets: SimpleNamespace, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    use_scratch_store(monkeypatch, root)
    params = copy.deepcopy(BASE) if isinstance(case.params, dict) else case.params
    ctx = SimpleNamespace(root=root, params=params, env={}, prefix=[], assets=assets,
                          request=request)
    if case.setup:
        case.setup(ctx)
    if isinstance(ctx.params, dict):
        for section, values in case.params.items():
            merged = ctx.params.get(section)
            ctx.params[section] = ({**merged, **values} if isinstance(merged, dict)
                                   and isinstance(values, dict) else values)
        (root / "params.yaml").write_text(yaml.safe_dump(ctx.params))
    elif ctx.params is not None:
        (root / "params.yaml").write_text(ctx.params)
    leave_previous_outputs(root, case.stage)
    before = snapshot(root)

    if case.real_process:
        code, stderr = run_process(case, ctx)
        filled = "No space left on device" in stderr and PATHS["checkpoints"] in stderr
        if case.setup is full_disk and not filled:  # the case tests nothing then
            pytest.fail(f"the disk did not fill at the checkpoint:\n{stderr[-3000:]}")
    else:
        code, stderr = run_in_process(case, capsys, monkeypatch)

    assert code == 2, stderr[-3000:]
    line = the_error_line(stderr, case.words, case.real_process)
    assert not [words for words in case.untrue if words in line]
    after = snapshot(root)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert not {p for p in changed if not p.startswith(case.may_change)}
    cache = root / PATHS["cache"]
    assert not [p for p in cache.rglob("*") if p.is_file()], "a bad download stayed in the cache"


# ---------------------------------------------------------------- dcgan sample and export

USE_CASES = [
    pytest.param(["sample", "models:/dcgan-generator/7"],
                 ("models:/dcgan-generator/7", "version=7) not found", "`mlflow ui`"),
                 id="sample-version-missing"),
    pytest.param(["sample", "models:/dcgan-generator@best-cifar10"],
                 ("alias best-cifar10 not found", "`dvc repro` sets best-<dataset>"),
                 id="sample-alias-not-set"),
    pytest.param(["export", "runs:/0123456789abcdef0123456789abcdef/generator", "--format",
                  "onnx"], ("Run with id=0123456789abcdef0123456789abcdef not found",
                            "`dcgan compare` lists the runs"), id="export-run-missing"),
    pytest.param(["export", "notes.keras", "--format", "onnx"],
                 ("notes.keras: cannot be loaded as a Keras model", "models/generator.keras"),
                 id="export-file-not-a-model"),
    pytest.param(["sample", "d.keras"], ("d.keras: not a generator", "(N, 16, 16, 3) to (N, 1)"),
                 id="sample-discriminator-not-a-generator"),
    pytest.param(["export", "g.keras", "--format", "torchscript"],
                 ("cannot export to 'torchscript'", "saved_model, tflite, onnx"),
                 id="export-format-unknown"),
    pytest.param(["sample", "g.keras", "--z", "z5.npy"],
                 ("--z z5.npy: vectors of width 5", "takes z of width 8", "(N, 8)"),
                 id="sample-z-wrong-width"),
    pytest.param(["sample", "g.keras", "--n", "10", "--interpolate", "3,99"],
                 ("cell 99 is not in the grid of 10 samples", "--numbered"),
                 id="sample-cell-outside-grid"),
]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, assets: SimpleNamespace) -> str:
    """A store holding one registered generator version, aliased best-digits; its URI."""
    import mlflow

    from dcgan.nets.serialisation import load_model
    from dcgan.tracking import registry
    from dcgan.tracking.runlog import RunLog

    with pytest.MonkeyPatch.context() as mp:
        uri = use_scratch_store(mp, tmp_path_factory.mktemp("store"))
        generator = load_model(assets.generator, remedy="")
        with RunLog.open({}, {"dataset": "digits"}) as log:
            version = registry.log_generator(log.run_id, generator, {"dataset": "digits"})
        mlflow.MlflowClient().set_registered_model_alias(registry.REGISTERED_MODEL,
                                                         "best-digits", str(version))
    return uri


@pytest.mark.parametrize("argv, words", USE_CASES)
def test_sample_and_export_fail_in_one_line_and_write_nothing(
        argv: list[str], words: tuple[str, ...], tmp_path: Path, assets: SimpleNamespace,
        registered: str, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`dcgan sample` and `dcgan export` on a store that has one registered version."""
    from dcgan.tools.cli import main

    use_scratch_store(monkeypatch, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered)
    shutil.copyfile(assets.generator, tmp_path / "g.keras")
    shutil.copyfile(assets.rgb_discriminator, tmp_path / "d.keras")
    (tmp_path / "notes.keras").write_text("not a model")
    np.save(tmp_path / "z5.npy", np.zeros((4, 5), np.float32))
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr[-3000:]
    the_error_line(stderr, words, real_process=False)
    assert snapshot(tmp_path) == before
