"""End to end: a shared DVC remote, round trip (slow, about 20 s after the `pipeline` fixture).

Run with `pytest tests/test_remote.py -q`. A local directory stands in for S3 or GCS: the
commands are the same with the dvc-s3 and dvc-gs plugins. A copy of the session's tiny
pipeline (its workspace and DVC cache, so nothing trains again) commits dvc.lock and the
`cache: false` outs to git, as this repo does, adds the remote to .dvc/config and runs
`dvc push`. A `git clone` of it then runs `dvc pull`, which must restore every out with the
md5 in dvc.lock. A plain `dvc repro` then runs only track, whose output (what the MLflow
store shows) is in neither git nor the remote, and so completes the clone's store: the run
with every metric, the registered generator and its alias. A second finds nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dvc_repo import PATHS, commit_all, copy_workspace, ran_stages, run
from mlflow.tracking import MlflowClient

STAGES = {"fetch", "preprocess", "classifier", "train", "generate", "evaluate", "probe",
          "track"}
# The track stage's output: what the MLflow store shows, in neither git nor the remote.
TRACKED = PATHS["tracked"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _outs(repo: Path) -> list[dict]:
    """Every out of every stage in repo's dvc.lock, plus `cached`: False for the
    `cache: false` outs of dvc.yaml (whose paths are written as `${paths.name}`)."""
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    paths = pipeline["vars"][0]["paths"]
    uncached = {re.sub(r"\$\{paths\.(\w+)\}", lambda m: paths[m[1]], next(iter(out)))
                for stage in pipeline["stages"].values() for out in stage.get("outs", [])
                if isinstance(out, dict) and next(iter(out.values())).get("cache") is False}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == STAGES
    return [{**out, "cached": out["path"] not in uncached}
            for entry in lock.values() for out in entry.get("outs", [])]


def _manifest(repo: Path, md5: str) -> list[dict]:
    """The `.dir` object of a directory out: one {md5, relpath} per file."""
    return json.loads((repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_text())


def _objects(repo: Path, outs: list[dict]) -> set[str]:
    """The cache objects a push must send: each cached file, each .dir and its files."""
    needed = set()
    for out in outs:
        if out["cached"]:
            needed.add(out["md5"])
            if out["md5"].endswith(".dir"):
                needed |= {entry["md5"] for entry in _manifest(repo, out["md5"])}
    return needed


def _files(repo: Path, outs: list[dict]) -> dict[str, int]:
    """Every file under the outs, with its mtime in ns."""
    paths = [p for out in outs for p in
             ([repo / out["path"]] if (repo / out["path"]).is_file()
              else sorted((repo / out["path"]).rglob("*")))]
    return {str(p.relative_to(repo)): p.stat().st_mtime_ns for p in paths if p.is_file()}


@pytest.fixture(scope="module")
def round_trip(pipeline: SimpleNamespace,
               tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("remote")
    origin, storage, fresh = root / "origin", root / "storage", root / "fresh"
    # 1. A private copy: other tests change the fixture's params and commits, so take its
    #    workspace as it is now; a repro brings it up to date (normally it runs nothing).
    copy_workspace(pipeline.path, origin)
    run(["git", "init", "-q"], origin)
    run(["dvc", "repro"], origin)
    # 2. What a team commits: dvc.lock and the `cache: false` outs (git); then the remote
    #    in .dvc/config, so every clone has it.
    commit_all(origin, "pipeline outputs")
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], origin)
    remote_commit = commit_all(origin, "DVC remote")
    pushes = [run(["dvc", "push"], origin) for _ in range(2)]
    # 3. Another machine: a clone has the code, dvc.lock and the uncached outs, no data.
    run(["git", "clone", "-q", str(origin), str(fresh)], root)
    outs = _outs(fresh)
    missing_before = {o["path"] for o in outs if not (fresh / o["path"]).exists()}
    pull = run(["dvc", "pull"], fresh)
    status = run(["dvc", "status"], fresh)
    cloud = run(["dvc", "status", "--cloud"], fresh)
    mtimes = _files(fresh, outs)
    no_store = not (fresh / "mlflow.db").exists()
    # 4. A plain repro completes the clone's MLflow store; a second runs nothing.
    repro = run(["dvc", "repro"], fresh)
    again = run(["dvc", "repro"], fresh)
    return SimpleNamespace(origin=origin, storage=storage, fresh=fresh, outs=outs,
                           pushes=pushes, pull=pull, status=status, cloud=cloud, repro=repro,
                           again=again, mtimes=mtimes, missing_before=missing_before,
                           remote_commit=remote_commit, no_store=no_store)


@pytest.mark.slow
def test_push_sends_each_cached_object_once(round_trip: SimpleNamespace) -> None:
    rt = round_trip
    needed = _objects(rt.fresh, rt.outs)
    stored = {p.parent.name + p.name for p in (rt.storage / "files/md5").rglob("*")
              if p.is_file()}
    assert stored == needed  # every cached out, nothing else
    # The `cache: false` outs (metrics, history, stats) live in git, never in the remote.
    uncached = {o["md5"] for o in rt.outs if not o["cached"]}
    assert {"data/metrics.json", "data/train/history.csv"} <= {
        o["path"] for o in rt.outs if not o["cached"]}
    assert not uncached & stored
    first, second = rt.pushes
    print(f"push: {first.stdout.strip().splitlines()[-1]!r}, again: {second.stdout.strip()!r}; "
          f"pull: {rt.pull.stdout.strip().splitlines()[-1]!r}; "
          f"repro after pull: {rt.repro.stdout.strip().splitlines()[-1]!r}")  # with -s
    assert first.stdout.strip().splitlines()[-1] == f"{len(needed)} files pushed"
    assert second.stdout.strip() == "Everything is up to date."


@pytest.mark.slow
def test_pull_restores_every_out_with_its_locked_md5(round_trip: SimpleNamespace) -> None:
    rt = round_trip
    # Before the pull the clone has exactly the uncached outs from git, which are all but
    # track's (git ignores it, and the repro after the pull writes it).
    assert rt.missing_before == {o["path"] for o in rt.outs if o["cached"]} | {TRACKED}
    for out in (o for o in rt.outs if o["path"] != TRACKED):
        path = rt.fresh / out["path"]
        if out["md5"].endswith(".dir"):
            entries = _manifest(rt.fresh, out["md5"])
            assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) \
                == sorted(e["relpath"] for e in entries), out["path"]
            for entry in entries:
                assert _md5(path / entry["relpath"]) == entry["md5"], entry["relpath"]
            assert len(entries) == out["nfiles"]
        else:
            assert _md5(path) == out["md5"], out["path"]
    files = sum(len(_manifest(rt.fresh, o["md5"])) if o["md5"].endswith(".dir") else 1
                for o in rt.outs if o["cached"])
    fetched = len(_objects(rt.fresh, rt.outs))
    assert rt.pull.stdout.strip().splitlines()[-1] == \
        f"{fetched} files fetched and {files} files added"
    for path in ("models/generator.keras", "models/classifier.keras",
                 "data/processed/dataset"):
        assert f"A       {path}" in rt.pull.stdout, path


@pytest.mark.slow
def test_pulled_clone_reruns_only_track(round_trip: SimpleNamespace) -> None:
    rt = round_trip
    # After the pull, DVC misses only track's output, which no remote holds.
    assert [line.split() for line in rt.status.stdout.strip().splitlines()] == [
        ["track:"], ["changed", "outs:"], ["deleted:", TRACKED]]
    assert rt.cloud.stdout.strip() == "Cache and remote 'storage' are in sync."
    assert ran_stages(rt.repro.stdout) == {"track"}
    skipping = {line for line in rt.repro.stdout.splitlines() if line.endswith("skipping")}
    assert skipping == {f"Stage '{stage}' didn't change, skipping"
                        for stage in STAGES - {"track"}}
    # Track touched no other output (its own holds the same bytes as in the origin,
    # whose dvc.lock records them), and the clone's store exists only since the repro.
    outs = [o for o in rt.outs if o["path"] != TRACKED]
    assert _files(rt.fresh, outs) == rt.mtimes
    assert _md5(rt.fresh / TRACKED) == next(o["md5"] for o in rt.outs if o["path"] == TRACKED)
    assert rt.no_store and (rt.fresh / "mlflow.db").is_file()
    *skipped, last = rt.again.stdout.strip().splitlines()
    assert sorted(skipped) == sorted(f"Stage '{stage}' didn't change, skipping"
                                     for stage in STAGES)
    assert last == "Data and pipelines are up to date."
    assert run(["git", "status", "--porcelain"], rt.fresh).stdout == ""


@pytest.mark.slow
def test_repro_gives_the_pulled_clone_its_run_model_and_alias(
        round_trip: SimpleNamespace) -> None:
    rt = round_trip
    client = MlflowClient(f"sqlite:///{rt.fresh / 'mlflow.db'}")
    [run_] = client.search_runs([client.get_experiment_by_name("dcgan").experiment_id])
    run_id = run_.info.run_id
    [version] = client.search_model_versions("name = 'dcgan-generator'")
    assert (int(version.version), version.run_id) == (1, run_id)
    assert int(client.get_model_version_by_alias("dcgan-generator", "best-mnist-5k").version) == 1
    metrics = json.loads((rt.fresh / "data/metrics.json").read_text())
    probe = json.loads((rt.fresh / "data/probe.json").read_text())
    assert run_.data.metrics["frechet_distance"] == metrics["frechet_distance"]
    assert run_.data.metrics["kid"] == metrics["kid"]
    assert run_.data.metrics["probe_accuracy"] == probe["probe_accuracy"]
    epochs = len((rt.fresh / "data/train/history.csv").read_text().splitlines()) - 1
    assert len(client.get_metric_history(run_id, "d_loss")) == epochs
    assert run_.data.tags["generator_md5"] == _md5(rt.fresh / "models/generator.keras")
    table = run(["dcgan", "compare"], rt.fresh).stdout
    for column in ("frechet_distance", "kid", "probe_accuracy"):
        assert column in table.splitlines()[1], table
    code = ("import mlflow, numpy as np; "
            "g = mlflow.keras.load_model('models:/dcgan-generator@best-mnist-5k'); "
            "print(g(np.zeros((1, g.input_shape[-1]), 'float32')).shape)")
    assert run([sys.executable, "-c", code], rt.fresh).stdout.strip().endswith("(1, 16, 16, 1)")
    assert run(["git", "status", "--porcelain"], rt.fresh).stdout == ""


@pytest.mark.slow
def test_a_local_remote_stays_out_of_git(round_trip: SimpleNamespace,
                                         tmp_path: Path) -> None:
    rt = round_trip
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(rt.origin), str(clone)], tmp_path)
    run(["git", "checkout", "-q", f"{rt.remote_commit}~1"], clone)  # before the remote
    no_remote = run(["dvc", "pull"], clone, check=False)
    assert no_remote.returncode != 0
    assert "No remote provided and no default remote set." in no_remote.stdout + \
        no_remote.stderr
    # --local writes .dvc/config.local, which git ignores: one machine's own remote.
    run(["dvc", "remote", "add", "--local", "-d", "mine", str(rt.storage)], clone)
    assert "mine" in (clone / ".dvc/config.local").read_text()
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
    run(["dvc", "pull"], clone)
    assert _md5(clone / "models/generator.keras") == next(
        o["md5"] for o in rt.outs if o["path"] == "models/generator.keras")
