"""Tests of `dcgan compare` (dcgan.tools.compare and dcgan.tools.cli) against a real MLflow SQLite
store.

Run with `pytest tests/test_compare.py -q`. One store per module holds five runs logged
with MlflowClient: three finished mnist-5k runs that differ only in train.lr (one from a
`dvc exp run`, one without frechet_distance or train_seconds), a fashion-1k run and a
FAILED mnist-5k run. Covers sorting, filters, the default and chosen columns, durations,
the text and CSV output, and the one-line errors.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from dcgan.core.errors import UserError
from dcgan.tools import compare
from dcgan.tools.cli import main
from dcgan.tracking.queries import search_runs

T0 = 1_700_000_000_000  # ms since the epoch; run i starts i hours later
PARAMS = {"preprocess.image_size": "28", "preprocess.channels": "null", "train.epochs": "5",
          "train.batch_size": "64", "train.beta1": "0.5", "train.seed": "0"}
# name, dataset, train.lr, status, seconds from start to end, metrics, extra tags; oldest first.
RUNS = [
    ("failed", "mnist-5k", "0.001", "FAILED", 10, {"g_loss": 3.0}, {}),
    ("fashion", "fashion-1k", "0.0002", "FINISHED", 60,
     {"frechet_distance": 50.0, "classifier_score": 4.2, "train_seconds": 42.0}, {}),
    ("lr-5e-4", "mnist-5k", "0.0005", "FINISHED", 90, {"kid": 0.05, "precision": 0.4}, {}),
    ("lr-1e-4", "mnist-5k", "0.0001", "FINISHED", 4000,
     {"frechet_distance": 12.25, "kid": 0.011, "precision": 0.7, "recall": 0.6,
      "train_seconds": 3725.0}, {"dvc_exp_name": "lucid-kite"}),
    ("lr-2e-4", "mnist-5k", "0.0002", "FINISHED", 400,
     {"frechet_distance": 30.54321, "kid": 0.0213, "precision": 0.61, "recall": 0.52,
      "train_seconds": 337.0}, {}),
]


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating one costs over a second), logged once."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)  # a client of its own leaves mlflow's globals alone
    experiment_id = client.create_experiment("dcgan", artifact_location=(root / "mlruns").as_uri())
    for i, (name, dataset, lr, status, span, metrics, tags) in enumerate(RUNS):
        start = T0 + i * 3_600_000
        run = client.create_run(experiment_id, start_time=start, run_name=name,
                                tags={"dataset": dataset, "arch": "paper", **tags})
        run_id = run.info.run_id
        for key, value in {**PARAMS, "fetch.dataset": dataset, "train.lr": lr}.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, timestamp=start)
        client.set_terminated(run_id, status=status, end_time=start + span * 1000)
    return uri


@pytest.fixture(autouse=True)
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store_uri: str):
    """The module's store as MLFLOW_TRACKING_URI, no other store settings, a scratch cwd."""
    for name in ("MLFLOW_EXPERIMENT_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.chdir(tmp_path)
    yield store_uri
    # search_runs points mlflow at the store, which also exports MLFLOW_TRACKING_URI; unset
    # it (monkeypatch then restores whatever the caller had).
    mlflow.set_tracking_uri(None)


def mnist_runs() -> pd.DataFrame:
    return search_runs(dataset="mnist-5k", finished_only=True)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[str, str]:
    """`dcgan compare ARGS` in this process; its stdout and stderr."""
    main(["compare", *args])
    captured = capsys.readouterr()
    return captured.out, captured.err


# ---------------------------------------------------------------- the table


def test_sort_ascending_descending_and_missing_last() -> None:
    runs = mnist_runs()
    assert list(compare.table(runs)["run"]) == ["lr-1e-4", "lr-2e-4", "lr-5e-4"]
    # lr-5e-4 has no frechet_distance: last in both directions.
    assert list(compare.table(runs, descending=True)["run"]) == ["lr-2e-4", "lr-1e-4", "lr-5e-4"]
    assert list(compare.table(runs, sort="kid", descending=True)["run"]) == [
        "lr-5e-4", "lr-2e-4", "lr-1e-4"]


def test_default_columns_show_only_differing_params_and_present_metrics() -> None:
    df = compare.table(mnist_runs())
    assert list(df.columns) == ["run", "exp", "train.lr", "frechet_distance", "kid", "precision",
                                "recall", "duration", "run_id"]
    # Across datasets fetch.dataset differs too, and the fashion run brings classifier_score.
    df = compare.table(search_runs(finished_only=True))
    assert [c for c in df.columns if "." in c] == ["fetch.dataset", "train.lr"]
    assert "classifier_score" in df.columns and "probe_accuracy" not in df.columns


def test_default_params_fall_back_when_none_differ() -> None:
    df = compare.table(mnist_runs(), limit=1)
    assert list(df["run"]) == ["lr-1e-4"]
    assert [c for c in df.columns if "." in c] == ["train.epochs", "train.lr"]


def test_chosen_params_and_metrics_and_unknown_names() -> None:
    df = compare.table(mnist_runs(), params=["train.epochs", "params.train.batch_size"],
                       metrics=["recall"], sort="kid")
    assert list(df.columns) == ["run", "exp", "train.epochs", "train.batch_size", "recall", "kid",
                                "duration", "run_id"]
    assert set(df["train.batch_size"]) == {"64"}
    with pytest.raises(UserError, match=r"unknown param 'train\.nope'.*train\.lr"):
        compare.table(mnist_runs(), params=["train.lr", "train.nope"])
    with pytest.raises(UserError, match=r"unknown sort metric 'fid'.*frechet_distance"):
        compare.table(mnist_runs(), sort="fid")


def test_duration_exp_and_run_id_columns() -> None:
    runs = mnist_runs()
    df = compare.table(runs).set_index("run")
    # lr-5e-4 has no train_seconds: its duration is the run's 90 s span.
    assert df["duration"].to_dict() == {"lr-1e-4": "1h02m05s", "lr-2e-4": "5m37s",
                                        "lr-5e-4": "1m30s"}
    assert df["exp"].to_dict() == {"lr-1e-4": "lucid-kite", "lr-2e-4": "", "lr-5e-4": ""}
    full = runs.set_index("tags.mlflow.runName")["run_id"]
    assert df.loc["lr-2e-4", "run_id"] == full["lr-2e-4"][:8]
    assert [compare.format_duration(s) for s in (42, 59.6, 3600)] == ["42s", "1m00s", "1h00m00s"]


def test_text_has_four_significant_digits_and_marks_missing_values() -> None:
    text = compare.format_table(compare.table(mnist_runs()))
    lines = text.splitlines()
    assert lines[0].split() == ["run", "exp", "train.lr", "frechet_distance", "kid", "precision",
                                "recall", "duration", "run_id"]
    assert "30.54 " in lines[2] and "30.543" not in text
    assert lines[3].split()[:3] == ["lr-5e-4", "0.0005", "-"]  # no exp, no frechet_distance


# ---------------------------------------------------------------- the command


def test_cli_csv_equals_table(capsys: pytest.CaptureFixture, store: str) -> None:
    out, err = run_cli(capsys, "--dataset", "mnist-5k", "--csv")
    parsed = pd.read_csv(io.StringIO(out), dtype={"train.lr": str}).fillna({"exp": ""})
    pd.testing.assert_frame_equal(parsed, compare.table(mnist_runs()), check_dtype=False)
    # The summary goes to stderr so that stdout stays pure CSV.
    assert err == (f"# 3 finished runs in {store} (dataset mnist-5k), "
                   "sorted by frechet_distance ascending\n")


def test_cli_text_dataset_filter_and_limit(capsys: pytest.CaptureFixture, store: str) -> None:
    out, err = run_cli(capsys, "--dataset", "fashion-1k")
    lines = out.splitlines()
    assert lines[0] == (f"# 1 finished run in {store} (dataset fashion-1k), "
                        "sorted by frechet_distance ascending")
    assert len(lines) == 3 and lines[2].split()[0] == "fashion"
    assert err == ""
    out, _ = run_cli(capsys, "--limit", "2", "--sort", "kid", "--desc")
    assert out.startswith(f"# 2 of 4 finished runs in {store}, sorted by kid descending\n")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["lr-5e-4", "lr-2e-4"]


def test_cli_finished_only_unless_all(capsys: pytest.CaptureFixture) -> None:
    finished = pd.read_csv(io.StringIO(run_cli(capsys, "--csv")[0]))
    assert set(finished["run"]) == {"lr-1e-4", "lr-2e-4", "lr-5e-4", "fashion"}
    assert "status" not in finished.columns
    everything = pd.read_csv(io.StringIO(run_cli(capsys, "--all", "--csv")[0]))
    assert len(everything) == 5
    assert everything.iloc[-1][["run", "status"]].tolist() == ["failed", "FAILED"]


def test_cli_no_matching_runs_is_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--dataset", "cifar10"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("error: no finished runs of dataset 'cifar10'")


def test_cli_missing_experiment_is_one_line(capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "gan-zoo")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and "no experiment 'gan-zoo'" in err


def test_unknown_sort_metric_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "dcgan", "compare", "--sort", "fid"],
                            cwd=tmp_path, env=os.environ.copy(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()  # no TensorFlow start-up chatter, no traceback
    assert line.startswith("error: unknown sort metric 'fid'") and "frechet_distance" in line
    assert not (tmp_path / "mlflow.db").exists()  # it read MLFLOW_TRACKING_URI's store


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("dcgan")  # installed by `pip install -e .`
    result = subprocess.run([str(script), "compare", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--sort METRIC" in result.stdout and "--params A,B" in result.stdout


def test_missing_store_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    result = subprocess.run([sys.executable, "-m", "dcgan", "compare"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: no MLflow store at {tmp_path.resolve() / 'mlflow.db'}; run the pipeline first "
        "(`dvc repro`) or set MLFLOW_TRACKING_URI"]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- seeds and protocols


def _seed_runs() -> pd.DataFrame:
    """Runs in search_runs' layout: two lrs over seeds; one run under another protocol."""
    rows = []
    arms = [("0.0002", 42, 30.0, "p1"), ("0.0002", 1, 34.0, "p1"), ("0.0002", 2, 32.0, "p1"),
            ("0.0005", 42, 20.0, "p1"), ("0.0005", 1, 22.0, "p1"), ("0.0002", 3, 90.0, "p2")]
    for i, (lr, seed, fd, stamp) in enumerate(arms):
        rows.append({"run_id": f"{i:032d}", "params.train.lr": lr,
                     "params.train.seed": str(seed), "params.train.epochs": "5",
                     "metrics.frechet_distance": fd, "metrics.recall": 0.8 + i / 100,
                     "tags.protocol": stamp})
    return pd.DataFrame(rows)


def test_group_by_seed_gives_mean_std_and_n_per_arm() -> None:
    df = compare.grouped(_seed_runs(), metrics=["recall"])
    assert list(df.columns) == ["train.lr", "train.seed", "n", "recall", "recall_std",
                                "frechet_distance", "frechet_distance_std"]
    assert df["train.lr"].tolist() == ["0.0005", "0.0002", "0.0002"]  # best mean first
    assert df["train.seed"].tolist() == ["42,1", "42,1,2", "3"]  # p2's run is apart
    assert df["n"].tolist() == [2, 3, 1]
    assert df["frechet_distance"].tolist() == [21.0, 32.0, 90.0]
    assert df["frechet_distance_std"].iloc[:2].tolist() == pytest.approx([2**0.5, 2.0])
    assert np.isnan(df["frechet_distance_std"].iloc[2])  # one run: no spread
    text = compare.format_grouped(df).splitlines()
    assert "21 ± 1.4" in text[1] and "32 ± 2" in text[2] and text[3].split()[-1] == "90"


def test_group_by_unknown_param_is_one_line() -> None:
    with pytest.raises(UserError, match="unknown param 'train.sed'"):
        compare.grouped(_seed_runs(), over="train.sed")


def test_mixed_protocols_warn_in_one_line() -> None:
    runs = _seed_runs()
    warning = compare.protocol_warning(runs)
    assert warning.startswith("warning: these runs were measured under 2 protocols (p1 | p2)")
    assert "\n" not in warning
    assert compare.protocol_warning(runs[runs["tags.protocol"] == "p1"]) is None
    assert compare.protocol_warning(runs.drop(columns="tags.protocol")) is None


def test_cli_group_by(capsys: pytest.CaptureFixture, store: str) -> None:
    out, err = run_cli(capsys, "--dataset", "mnist-5k", "--group-by")
    lines = out.splitlines()
    assert lines[0].startswith(f"# 3 groups of 3 finished runs in {store}")
    assert lines[1].split()[:3] == ["train.lr", "train.seed", "n"]
    assert err == ""  # the runs carry no protocol stamps: nothing to warn about
