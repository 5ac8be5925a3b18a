"""Unit tests of dcgan.tracking (store, runlog, runfile, queries, registry) against real
MLflow SQLite stores in temporary directories.

Run with `pytest tests/test_tracking.py -q`. Covers where the store lives
(MLFLOW_TRACKING_URI > DVC_ROOT > cwd), that importing the package writes nothing,
opening and reopening runs, FAILED runs, metric logging, the run file, finding a
generator's run, run names and source tags, failing fast on an unreachable server,
concurrent set-up of a new store, the registered generator and the `best-<dataset>` alias.
The sync step that uses them is tested in test_sync.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from dcgan.core.errors import UserError
from dcgan.sampling.images import to_uint8
from dcgan.tracking import registry
from dcgan.tracking.queries import runs_of_generator
from dcgan.tracking.runfile import RunRecord, read_run_file, write_run_file
from dcgan.tracking.runlog import RunLog, flatten_metrics, run_name, source_tags
from dcgan.tracking.store import EXPERIMENT, check_store, repo_root, tracking_uri


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No store settings from the caller's shell; the cwd is a scratch directory."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME",
                 "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    while mlflow.active_run():  # a failing test must not leave a run open for the next
        mlflow.end_run()
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; unset it (monkeypatch then
    # restores whatever the caller had).
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def shared_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating one costs over a second; each test makes its
    own runs and looks them up by id."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, shared_uri: str) -> str:
    """The shared SQLite store, named by MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_uri)
    return shared_uri


# ---------------------------------------------------------------- where the store is


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert tracking_uri() == f"sqlite:///{cwd.resolve() / 'mlflow.db'}"
    assert repo_root() == cwd.resolve()

    root = tmp_path / "repo"
    monkeypatch.setenv("DVC_ROOT", str(root))
    assert tracking_uri() == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    assert repo_root() == root.resolve()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri() == "http://127.0.0.1:5999"

    monkeypatch.setenv("DVC_ROOT", "")  # empty counts as unset
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri() == f"sqlite:///{cwd.resolve() / 'mlflow.db'}"


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    code = ("import os, mlflow, dcgan.tracking.sync\n"
            "assert not mlflow.is_tracking_uri_set(), 'URI set at import'\n"
            "assert 'MLFLOW_TRACKING_URI' not in os.environ\n"
            "print('imported')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no mlruns


def _run_in_temp_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path, str]:
    """What `dvc exp run --temp` does: the stage runs in a throw-away copy with DVC_ROOT set
    to the repo, and no MLFLOW_TRACKING_URI. Returns (repo, copy, run id)."""
    root, temp_copy = tmp_path / "repo", tmp_path / "temp-copy"
    root.mkdir()
    temp_copy.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.chdir(temp_copy)
    (temp_copy / "note.txt").write_text("hello")
    with RunLog.open({"x": 1}, {}) as log:
        log.artifacts([temp_copy / "note.txt"], "stage")
    return root, temp_copy, log.run_id


def test_default_store_lives_at_dvc_root(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    root, temp_copy, run_id = _run_in_temp_copy(monkeypatch, tmp_path)
    assert (root / "mlflow.db").is_file()
    assert not (temp_copy / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{root.resolve() / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_default_store_keeps_artifacts_at_dvc_root(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    root, temp_copy, run_id = _run_in_temp_copy(monkeypatch, tmp_path)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location == (root.resolve() / "mlruns" / "dcgan").as_uri()
    assert mlflow.get_run(run_id).info.artifact_uri.startswith(experiment.artifact_location)
    copied = list((root / "mlruns").rglob("note.txt"))
    assert len(copied) == 1 and copied[0].read_text() == "hello"
    assert not (temp_copy / "mlruns").exists()


def test_experiment_name_from_env(store: str, monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "other")
    with RunLog.open({}, {}) as log:
        pass
    experiment_id = MlflowClient(store).get_run(log.run_id).info.experiment_id
    assert MlflowClient(store).get_experiment(experiment_id).name == "other"


# ---------------------------------------------------------------- runs


MD5 = "0123456789abcdef0123456789abcdef"


def test_open_and_reopen_round_trip(store: str, tmp_path: Path) -> None:
    params = {"train.lr": 0.0002, "train.epochs": 2, "fetch.folder": None}
    with RunLog.open(params, {"arch": "paper"}, "paper-run") as log:
        assert mlflow.active_run() is None  # no global run: the log holds its own
        log.tags({"generator_md5": MD5})
    client = MlflowClient(store)
    run = client.get_run(log.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "paper-run"
    assert run.data.params == {"train.lr": "0.0002", "train.epochs": "2",
                               "fetch.folder": "null"}
    assert run.data.tags["arch"] == "paper" and run.data.tags["generator_md5"] == MD5
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT

    n_runs = len(client.search_runs([run.info.experiment_id]))
    [found] = runs_of_generator(MD5)
    with RunLog.open(params, {}, resume=found.info.run_id) as again:
        again.tags({"generate.seed": 123, "generate.extra": None})
        assert again.metrics({"fid": 1.5}) == 1
        assert again.metrics({"fid": 1.5}) == 0  # the same value again: nothing to log
    run = client.get_run(log.run_id)
    assert again.run_id == log.run_id and run.info.status == "FINISHED"
    assert run.data.tags["generate.seed"] == "123"
    assert run.data.tags["generate.extra"] == "null"
    assert run.data.metrics == {"fid": 1.5}
    assert len(client.get_metric_history(log.run_id, "fid")) == 1
    assert len(client.search_runs([run.info.experiment_id])) == n_runs  # reopened, not new


def test_second_open_reuses_the_experiment(store: str, tmp_path: Path) -> None:
    with RunLog.open({}, {}) as first:
        pass
    with RunLog.open({}, {}) as second:
        pass
    client = MlflowClient(store)
    assert first.run_id != second.run_id
    assert (client.get_run(first.run_id).info.experiment_id ==
            client.get_run(second.run_id).info.experiment_id)


def test_run_that_raises_ends_failed(store: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), RunLog.open({"a": 1}, {}) as log:
        raise RuntimeError("boom")
    assert MlflowClient(store).get_run(log.run_id).info.status == "FAILED"


def test_reopened_run_skips_steps_it_has(store: str) -> None:
    """A training resumed after a kill repeats its last epoch: logged once, none missing."""
    image = np.zeros((4, 4), np.uint8)
    with pytest.raises(RuntimeError), RunLog.open({"a": 1}, {}) as log:
        log.metrics({"loss": 1.0, "fd": 5.0}, step=1)
        log.image(image, "grid", step=1)
        log.metrics({"loss": 2.0}, step=2)  # killed before fd and the grid of 2
        raise RuntimeError("killed")
    run_id, client = log.run_id, MlflowClient(store)
    experiment = client.get_run(run_id).info.experiment_id
    n_runs = len(client.search_runs([experiment]))
    with RunLog.open({"a": 1}, {}, resume=run_id) as again:
        assert again.run_id == run_id
        for step in (2, 3):  # the resumed training repeats epoch 2
            again.metrics({"loss": float(step), "fd": 5.0 + step}, step=step)
            again.image(image, "grid", step=step)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([experiment])) == n_runs  # reopened, not new
    for key in ("loss", "fd"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3], key
    pngs = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pngs) == [1, 2, 3]
    with RunLog.open({}, {}) as fresh:  # a new run is not filtered
        fresh.metrics({"loss": 1.0}, step=1)
    assert len(client.get_metric_history(fresh.run_id, "loss")) == 1


def test_resume_of_a_run_not_in_the_store_starts_a_new_one(store: str) -> None:
    with RunLog.open({}, {}, resume=MD5) as log:
        pass
    assert log.run_id != MD5
    assert MlflowClient(store).get_run(log.run_id).info.status == "FINISHED"


def test_runs_of_a_generator_newest_first_the_experiments_own_first(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    md5 = "a" * 32
    ids = {}
    for exp in ("exp-a", "exp-b", None):
        if exp:
            monkeypatch.setenv("DVC_EXP_NAME", exp)
        else:
            monkeypatch.delenv("DVC_EXP_NAME")
        with RunLog.open({}, {"generator_md5": md5}) as log:
            ids[exp] = log.run_id
    with RunLog.open({}, {"generator_md5": "f" * 32}):  # another generator
        pass
    assert [r.info.run_id for r in runs_of_generator(md5)] == [ids[None], ids["exp-b"],
                                                                ids["exp-a"]]
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    assert runs_of_generator(md5)[0].info.run_id == ids["exp-a"]
    monkeypatch.setenv("DVC_EXP_NAME", "exp-c")  # none of its own: the newest
    assert runs_of_generator(md5)[0].info.run_id == ids[None]
    assert runs_of_generator("e" * 32) == []


def test_run_file_round_trip(tmp_path: Path) -> None:
    record = RunRecord(MD5, {"train.lr": 0.0002, "fetch.folder": None}, {"arch": "paper"})
    write_run_file(tmp_path / "out" / "run.json", record)
    assert read_run_file(tmp_path / "out" / "run.json") == record


@pytest.mark.parametrize("text", [None, "", "not json", '{"id": "x"}', "null\n",
                                  '{"generator_md5": "x\' or 1=1", "params": {}, "tags": {}}',
                                  '{"generator_md5": "' + MD5 + '"}'])
def test_broken_run_file_is_one_line(tmp_path: Path, text: str | None) -> None:
    run_file = tmp_path / "run.json"
    if text is not None:
        run_file.write_text(text)
    with pytest.raises(UserError, match=r"run.json: not a run file of the train stage .*; run "
                       r"the train stage first \(`dvc repro train`\)$"):
        read_run_file(run_file)


def test_metrics_skip_non_numbers(store: str, tmp_path: Path) -> None:
    with RunLog.open({}, {}) as log:
        log.metrics({"a": 1, "b": None, "c": 2.5, "d": "text"}, step=3)
        log.metrics({"a": 4}, step=4)
    client = MlflowClient(store)
    assert client.get_run(log.run_id).data.metrics == {"a": 4.0, "c": 2.5}
    history = client.get_metric_history(log.run_id, "a")
    assert [(m.step, m.value) for m in history] == [(3, 1.0), (4, 4.0)]
    assert client.get_metric_history(log.run_id, "b") == []


def test_artifacts_copied_once_unless_changed(store: str, tmp_path: Path) -> None:
    (tmp_path / "grid.png").write_bytes(b"png")
    (tmp_path / "history.csv").write_text("epoch\n1\n")
    with RunLog.open({}, {}) as log:
        assert log.artifacts([tmp_path / "history.csv", tmp_path / "grid.png"], "train") == 2
        assert log.artifacts([tmp_path / "history.csv", tmp_path / "grid.png"], "train") == 0
        (tmp_path / "history.csv").write_text("epoch\n1\n2\n")
        assert log.artifacts([tmp_path / "history.csv"], "train") == 1
    client = MlflowClient(store)
    top = {a.path for a in client.list_artifacts(log.run_id, "train")}
    assert top == {"train/history.csv", "train/grid.png"}
    held = Path(client.download_artifacts(log.run_id, "train/history.csv", str(tmp_path / "d")))
    assert held.read_text() == "epoch\n1\n2\n"


def test_nested_metrics_are_logged_with_dotted_names(store: str, tmp_path: Path) -> None:
    nested = {"fd": 3, "floor": {"fd": 1.5, "modes": None}, "probe": {"100": {"d": 0.9}},
              "flag": True}
    assert flatten_metrics(nested) == {"fd": 3.0, "floor.fd": 1.5, "probe.100.d": 0.9}
    with RunLog.open({}, {}) as log:
        log.metrics(nested)
    metrics = MlflowClient(store).get_run(log.run_id).data.metrics
    assert metrics == {"fd": 3.0, "floor.fd": 1.5, "probe.100.d": 0.9}


# ---------------------------------------------------------------- names and source tags


def test_run_named_after_the_dvc_experiment(store: str, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-lamb")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with RunLog.open({}, {"dataset": "x"}, "paper-x") as log:
        pass
    run = MlflowClient(store).get_run(log.run_id)
    assert run.info.run_name == "tidy-lamb"
    assert run.data.tags["dvc_exp_name"] == "tidy-lamb"
    assert run.data.tags["git_commit"] == "a" * 40
    assert run.data.tags["dataset"] == "x"


def test_run_outside_an_experiment_named_by_default_and_commit(
        store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["git", "init", "-q"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                 "--allow-empty", "-m", "x"]):
        subprocess.run(cmd, cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.chdir(repo)
    with RunLog.open({}, {}, "paper-mnist") as log:
        pass
    run = MlflowClient(store).get_run(log.run_id)
    assert run.info.run_name == f"paper-mnist@{head[:7]}"
    assert run.data.tags["git_commit"] == head
    assert "dvc_exp_name" not in run.data.tags


def test_source_tags_without_git(tmp_path: Path) -> None:
    assert source_tags() == {}  # the cwd is a scratch directory, not a repo
    assert run_name("paper", {}) == "paper"


# ---------------------------------------------------------------- failing fast


def test_unreachable_server_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    unreachable = rf"MLflow tracking server http://127.0.0.1:{port} \(\w+\) is unreachable"
    with pytest.raises(UserError, match=unreachable), \
            RunLog.open({}, {}):
        pass
    assert time.monotonic() - start < 10


def test_answering_server_passes_the_check(monkeypatch: pytest.MonkeyPatch, http_server) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", http_server.url.rstrip("/"))
    check_store()  # a 404 still proves something answers
    # An API call, which a server's host check guards, unlike /health.
    assert http_server.hits == ["/api/2.0/mlflow/experiments/search?max_results=1"]


@pytest.mark.slow
def test_new_store_set_up_by_two_processes_at_once(tmp_path: Path) -> None:
    """Two queued experiments starting together on a repo with no mlflow.db yet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["DVC_ROOT"] = str(tmp_path)
    code = ("import sys\nfrom dcgan.tracking.runlog import RunLog\n"
            "with RunLog.open({'i': sys.argv[1]}, {}):\n"
            "    pass\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"run{i}.json"], cwd=tmp_path,
                              env=env, stderr=subprocess.PIPE, text=True) for i in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
    assert sorted(r.data.params["i"] for r in runs) == ["run0.json", "run1.json", "run2.json"]


# ---------------------------------------------------------------- registry and alias


def _tiny_generator() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Reshape((4, 4, 1))])


def _registered_run(tmp_path: Path, dataset: str, fd: float | None, fail: bool = False,
                    protocol: str | None = None) -> str:
    """A run with a registered generator and, after it closes, a Fréchet distance (measured
    under `protocol`, a tag)."""
    tags = {"dataset": dataset, **({"protocol": protocol} if protocol else {})}
    with contextlib.suppress(RuntimeError), RunLog.open({}, tags) as log:
        registry.log_generator(log.run_id, _tiny_generator(), {"dataset": dataset})
        if fd is not None:
            log.metrics({"frechet_distance": fd})
        if fail:
            raise RuntimeError("diverged")
    return log.run_id


def _alias_run(store: str, dataset: str) -> str:
    client = MlflowClient(store)
    version = client.get_model_version_by_alias(registry.REGISTERED_MODEL, f"best-{dataset}")
    return version.run_id


def test_generator_registered_with_signature_and_input_example(store: str,
                                                               tmp_path: Path) -> None:
    run_id = _registered_run(tmp_path, "sig", 1.0)
    client = MlflowClient(store)
    assert registry.versions_of(run_id) == [int(client.search_model_versions(
        f"name = '{registry.REGISTERED_MODEL}' and run_id = '{run_id}'")[0].version)]
    [version] = client.search_model_versions(
        f"name = '{registry.REGISTERED_MODEL}' and run_id = '{run_id}'")
    assert version.tags == {"dataset": "sig"}
    uri = f"models:/{registry.REGISTERED_MODEL}/{version.version}"
    info = mlflow.models.get_model_info(uri)
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 4)
    example = mlflow.models.Model.load(uri).load_input_example()
    assert example.shape == (2, 4)
    # The pyfunc flavour (what `mlflow models serve` runs) answers with uint8 pixels, or
    # with the format the request's params ask for; the Keras flavour is the generator.
    assert [p.name for p in info.signature.params] == ["format"]
    served = mlflow.pyfunc.load_model(uri)
    raw = np.asarray(mlflow.keras.load_model(uri)(example))
    assert np.array_equal(served.predict(example), to_uint8(raw))
    assert np.array_equal(served.predict(example, params={"format": "raw"}), raw)


def test_best_alias_moves_to_the_lowest_frechet_distance(store: str, tmp_path: Path) -> None:
    worse = _registered_run(tmp_path, "digits", 5.0)
    assert registry.promote_best(worse) is not None and _alias_run(store, "digits") == worse
    better = _registered_run(tmp_path, "digits", 3.0)
    registry.promote_best(better)
    assert _alias_run(store, "digits") == better
    # Neither another dataset's better run, nor a failed one, nor one that was never
    # evaluated takes it.
    other = _registered_run(tmp_path, "faces", 1.0)
    registry.promote_best(other)
    failed = _registered_run(tmp_path, "digits", 0.5, fail=True)
    unscored = _registered_run(tmp_path, "digits", None)
    for run_id in (failed, unscored, worse):
        registry.promote_best(run_id)
        assert _alias_run(store, "digits") == better
    assert _alias_run(store, "faces") == other


def test_best_alias_compares_runs_of_one_protocol(store: str, tmp_path: Path) -> None:
    first = _registered_run(tmp_path, "glyphs", 5.0, protocol="classifier aaaa, N 1000")
    registry.promote_best(first)
    # A lower score from another classifier does not compare: the alias stays.
    other = _registered_run(tmp_path, "glyphs", 1.0, protocol="classifier bbbb, N 1000")
    registry.promote_best(first)
    assert _alias_run(store, "glyphs") == first
    better = _registered_run(tmp_path, "glyphs", 4.0, protocol="classifier aaaa, N 1000")
    registry.promote_best(better)
    assert _alias_run(store, "glyphs") == better
    registry.promote_best(other)  # promoting under its own protocol: it is the best there
    assert _alias_run(store, "glyphs") == other
