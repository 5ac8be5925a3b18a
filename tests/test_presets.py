"""Params presets (presets/*.yaml, `dcgan preset`): checked against params.yaml, printed as
`dvc exp run` arguments that DVC reads back as the same values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcgan.core.errors import UserError
from dcgan.tools import presets

ROOT = Path(__file__).resolve().parent.parent


def test_the_tutorial_preset_is_the_seed_articles_network():
    settings = presets.overrides("tutorial", ROOT / "presets", ROOT / "params.yaml")
    assert settings == {"preprocess.image_size": 32, "preprocess.channels": 3,
                        "train.arch": "tutorial", "train.latent_dim": 128}


def test_the_arguments_read_back_as_the_same_values():
    settings = {"train.arch": "tutorial", "train.latent_dim": 128, "train.lr": 1e-4,
                "train.g_lr": None, "train.keep_best": False}
    text = presets.set_params_arguments(settings)
    pairs = [arg.split("=", 1) for arg in text.split(" ") if arg != "-S"]
    assert {key: yaml.safe_load(value) for key, value in pairs} == settings


def test_the_command_prints_the_arguments():
    proc = subprocess.run([sys.executable, "-m", "dcgan", "preset", "tutorial"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("-S preprocess.image_size=32 -S preprocess.channels=3 "
                                   "-S train.arch=tutorial -S train.latent_dim=128")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "presets").mkdir()
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize("preset, message", [
    ("train: {latent_dimm: 8}", "train.latent_dimm is not a known key"),
    ("train: {arch: tutorial}\npreprocess: {image_size: 30}", "multiple of 4"),
    ("model: {arch: tutorial}", "model is not a params section"),
    ("- train.arch=tutorial", "a preset maps params sections to their keys"),
])
def test_a_bad_preset_is_one_line_naming_the_problem(repo, preset, message):
    (repo / "presets/bad.yaml").write_text(preset)
    with pytest.raises(UserError, match=message):
        presets.overrides("bad", repo / "presets", repo / "params.yaml")


def test_an_unknown_preset_names_the_known_ones(repo):
    (repo / "presets/small.yaml").write_text("train: {epochs: 2}")
    proc = subprocess.run([sys.executable, "-m", "dcgan", "preset", "large", "--repo", str(repo)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no preset 'large' in {repo / 'presets'}/ (known: small)"]
