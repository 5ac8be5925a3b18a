"""Tests of benchmarks.quality (`python -m benchmarks quality`): both recipes really train and are
scored every epoch, the threshold comes from the tutorial's curve, and early stopping and the
record's arithmetic hold.

Run with `pytest benchmarks/tests/test_quality.py -q` (about a minute: 64 images of 16x16,
latent 8).
These check the mechanics; the figures come from running the command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_training import classifier_file, processed_npz

from benchmarks import quality
from benchmarks.cli import main
from dcgan.core.errors import UserError

TINY = {"preprocess": {"image_size": 16},
        "train": {"batch_size": 16, "latent_dim": 8, "g_filters": 8, "d_filters": 8}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("quality")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(TINY))
    return {"data_file": processed_npz(root), "classifier_file": classifier_file(root),
            "params_file": params}


@pytest.mark.slow
def test_curve_scores_every_epoch_with_cumulative_seconds(files: dict) -> None:
    points = quality.curve("ours", epochs=2, latent_dim=8, **files)
    assert [p["epoch"] for p in points] == [1, 2]
    assert 0 < points[0]["seconds"] < points[1]["seconds"]
    assert all(p["frechet_distance"] > 0 for p in points)


@pytest.mark.slow
def test_curve_stops_at_the_threshold(files: dict) -> None:
    points = quality.curve("tutorial", epochs=3, threshold=1e9, latent_dim=8, **files)
    assert [p["epoch"] for p in points] == [1]


@pytest.mark.slow
def test_run_takes_the_threshold_from_the_tutorial_curve(files: dict) -> None:
    record = quality.run(threshold=None, threshold_epoch=2, max_epochs=2, latent_dim=8,
                               **files)
    tutorial, ours = record["curves"]["tutorial"], record["curves"]["ours"]
    assert len(tutorial) == 2 and record["threshold"] == tutorial[1]["frechet_distance"]
    assert record["threshold_from"] == "tutorial recipe, epoch 2"
    first = next(p for p in tutorial if p["frechet_distance"] <= record["threshold"])
    assert record["reached"]["tutorial"] == first
    if record["reached"]["ours"] is None:  # ours trained both epochs without reaching it
        assert len(ours) == 2 and record["ours_over_tutorial_seconds"] is None
        assert record["met"] is False
    else:  # ours stopped at the epoch that reached it
        assert record["reached"]["ours"] == ours[-1]
        assert record["ours_over_tutorial_seconds"] == pytest.approx(
            ours[-1]["seconds"] / first["seconds"], abs=1e-3)
        assert record["met"] == (record["ours_over_tutorial_seconds"] <= 0.5)
    assert record["recipes"]["ours"]["batch_size"] == 16
    assert record["recipes"]["tutorial"]["batch_size"] == 256
    assert record["cores"] >= 1 and record["tensorflow"]


def test_missing_classifier_is_one_clear_error(files: dict, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `dvc repro classifier` first"):
        quality.run(files["data_file"], tmp_path / "none.keras", None, 20, 60)


def test_cli_rejects_a_bad_threshold_epoch(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["quality", "--threshold-epoch", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive whole number, got '0'" in capsys.readouterr().err
