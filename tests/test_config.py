"""Unit tests of dcgan.core.config: defaults, params.yaml, one-line errors, arch/size rules, Adam.

Run with `pytest tests/test_config.py -q` (no TensorFlow; well under a second).
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from dcgan.core.config import (
    Params,
    TrainConfig,
    flatten,
    load_params,
    parse_params,
)
from dcgan.core.errors import UserError
from dcgan.nets.architectures import ARCHITECTURES, paper_start_size

REPO = Path(__file__).resolve().parents[1]


def error_of(raw: object) -> str:
    """The UserError message parse_params gives for `raw`; fails if it validates."""
    with pytest.raises(UserError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert message.startswith("params.yaml: ")
    return message


# ---------------------------------------------------------------- valid params


def test_defaults_validate() -> None:
    params = parse_params({})
    assert params == Params()
    assert parse_params(None) == params  # an empty file
    assert params.fetch.dataset == "mnist-5k"
    assert params.preprocess.image_size == 28
    assert params.train.arch == "paper"
    assert params.train.lr is None and params.train.beta1 is None


def test_repo_params_yaml_validates() -> None:
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    # The file spells out every key of every section, so nothing falls back to a default
    # that the file does not show.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)
    for section, values in raw.items():
        assert set(values) == set(type(getattr(params, section)).model_fields), section


def test_params_yaml_holds_the_code_defaults() -> None:
    """One set of defaults: a key left out of params.yaml means what the file says."""
    assert load_params(REPO / "params.yaml") == Params()


def test_partial_section_keeps_other_defaults() -> None:
    params = parse_params({"train": {"epochs": 3}})
    assert params.train.epochs == 3
    assert params.train.batch_size == TrainConfig().batch_size
    assert params.generate == Params().generate


# ---------------------------------------------------------------- one-line errors


def test_unknown_key_lists_allowed_keys() -> None:
    message = error_of({"train": {"learning_rate": 0.1}})
    assert "train.learning_rate" in message
    assert "not a known key" in message
    for key in TrainConfig.model_fields:
        assert key in message.split("allowed:", 1)[1]


def test_unknown_section_lists_sections() -> None:
    message = error_of({"optimizer": {"lr": 0.1}})
    assert "optimizer is not a known key" in message
    allowed = message.split("allowed:", 1)[1]
    for section in ("fetch", "preprocess", "classifier", "train", "generate", "evaluate"):
        assert section in allowed


@pytest.mark.parametrize(
    ("raw", "key", "shown", "allowed"),
    [
        # wrong types: YAML gives typed values, so strict validation rejects these
        ({"train": {"epochs": "10"}}, "train.epochs", "'10'", "valid integer"),
        ({"train": {"batch_size": 1.5}}, "train.batch_size", "1.5", "valid integer"),
        ({"train": {"epochs": 2.0}}, "train.epochs", "2.0", "valid integer"),
        ({"train": {"lr": "fast"}}, "train.lr", "'fast'", "valid number"),
        ({"train": 5}, "train", "5", "valid dictionary"),
        # out of range
        ({"train": {"lr": 0}}, "train.lr", "0", "greater than 0"),
        ({"train": {"lr": -0.001}}, "train.lr", "-0.001", "greater than 0"),
        ({"train": {"beta1": 1.0}}, "train.beta1", "1.0", "less than 1"),
        ({"preprocess": {"test_fraction": 1.0}}, "preprocess.test_fraction", "1.0",
         "less than 1"),
        ({"preprocess": {"test_fraction": 0.0}}, "preprocess.test_fraction", "0.0",
         "greater than 0"),
        ({"preprocess": {"image_size": 4}}, "preprocess.image_size", "4",
         "greater than or equal to 8"),
        ({"train": {"epochs": 0}}, "train.epochs", "0", "greater than or equal to 1"),
        ({"train": {"eval_every": -1}}, "train.eval_every", "-1", "greater than or equal to 0"),
        ({"probe": {"train_sizes": [100, 1]}}, "probe.train_sizes.1", "1",
         "greater than or equal to 2"),
        ({"probe": {"train_sizes": []}}, "probe.train_sizes", "[]", "at least 1 item"),
        ({"evaluate": {"mode_min_share": 0}}, "evaluate.mode_min_share", "0", "greater than 0"),
        # bad literals
        ({"train": {"arch": "wgan"}}, "train.arch", "'wgan'", "'paper' or 'tutorial'"),
        ({"train": {"precision": "float16"}}, "train.precision", "'float16'",
         "'float32' or 'mixed_bfloat16'"),
        ({"fetch": {"dataset": "imagenet"}}, "fetch.dataset", "'imagenet'", "'cifar10'"),
        ({"preprocess": {"channels": 2}}, "preprocess.channels", "2", "1 or 3"),
    ],
)
def test_bad_value_names_key_value_and_rule(raw: dict, key: str, shown: str,
                                            allowed: str) -> None:
    message = error_of(raw)
    assert f"{key} = {shown} is invalid" in message
    assert allowed in message


def test_first_of_several_errors_is_reported() -> None:
    message = error_of({"train": {"epochs": 0, "arch": "wgan"}})
    assert message.count(" is invalid") == 1


@pytest.mark.parametrize(("arch", "size"), [("paper", 30), ("paper", 72), ("paper", 8),
                                            ("paper", 12), ("tutorial", 30), ("tutorial", 18)])
def test_image_size_the_arch_cannot_produce(arch: str, size: int) -> None:
    message = error_of({"preprocess": {"image_size": size}, "train": {"arch": arch}})
    assert f"preprocess.image_size = {size}" in message
    assert f"train.arch '{arch}'" in message
    assert "e.g." in message  # says which sizes work


@pytest.mark.parametrize(("arch", "size"), [("paper", 16), ("paper", 28), ("paper", 32),
                                            ("paper", 64), ("paper", 20), ("paper", 256),
                                            ("tutorial", 28), ("tutorial", 32),
                                            ("tutorial", 64), ("tutorial", 8)])
def test_image_size_the_arch_can_produce(arch: str, size: int) -> None:
    params = parse_params({"preprocess": {"image_size": size}, "train": {"arch": arch}})
    assert params.preprocess.image_size == size


def test_folder_defaults_to_data_images_and_must_not_be_empty() -> None:
    # dvc.yaml makes fetch.folder a dependency of fetch, so it always names a path.
    assert parse_params({"fetch": {"dataset": "folder"}}).fetch.folder == "data/images"
    message = error_of({"fetch": {"dataset": "folder", "folder": ""}})
    assert "fetch.folder" in message and "'folder'" in message
    assert parse_params({"fetch": {"dataset": "folder", "folder": "imgs"}}).fetch.folder == "imgs"
    assert "fetch.folder" in error_of({"fetch": {"folder": None}})


def test_top_level_must_be_a_mapping() -> None:
    message = error_of([{"train": {}}])
    assert "top level must be a mapping" in message and "list" in message


# ---------------------------------------------------------------- load_params


def test_load_params_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.001\n")
    params = load_params(path)
    assert params.train.epochs == 3 and params.train.lr == 0.001


def test_load_params_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found") as info:
        load_params(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_load_params_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: [0.1\n")
    with pytest.raises(UserError, match="not valid YAML") as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message and "bad.yaml" in message and "line" in message


def test_load_params_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: ten\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: train.epochs = 'ten'")


def test_load_params_top_level_scalar(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("just a string\n")
    with pytest.raises(UserError, match="top level must be a mapping.*str"):
        load_params(path)


def test_load_params_accepts_exponent_without_dot(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 2e-4\n")
    assert load_params(path).train.lr == pytest.approx(2e-4)


# ---------------------------------------------------------------- helpers and properties


@pytest.mark.parametrize(("size", "start"), [(16, 4), (20, 5), (24, 6), (28, 7), (32, 4),
                                             (64, 4), (56, 7), (256, 4), (8, None),
                                             (12, None), (14, None), (30, None), (9, None),
                                             (36, None)])
def test_paper_start_size(size: int, start: int | None) -> None:
    assert paper_start_size(size) == start
    if start is not None:  # s * 2**n with n >= 2
        n = (size // start).bit_length() - 1
        assert start * 2**n == size and n >= 2


@pytest.mark.parametrize("arch", ["paper", "tutorial"])
def test_adam_null_resolves_to_the_arch(arch: str) -> None:
    expected = {"paper": ((4e-3, 1e-3), 0.5), "tutorial": ((1e-4, 1e-4), 0.9)}[arch]
    assert ARCHITECTURES[arch].adam == expected
    (g_lr, d_lr), beta1 = expected
    cfg = TrainConfig(arch=arch)
    assert (cfg.optimiser("g"), cfg.optimiser("d")) == ((g_lr, beta1), (d_lr, beta1))
    both = TrainConfig(arch=arch, lr=0.003)  # the shorthand sets both
    assert both.optimiser("g") == both.optimiser("d") == (0.003, beta1)
    zero = TrainConfig(arch=arch, beta1=0.0)  # 0 is not null
    assert zero.optimiser("g") == (g_lr, 0.0)
    assert TrainConfig(arch=arch, lr=0.01, beta1=0.7).optimiser("d") == (0.01, 0.7)


def test_flatten_all_sections() -> None:
    params = parse_params({"train": {"arch": "tutorial"}})
    flat = flatten(params)
    assert flat["fetch.dataset"] == "mnist-5k"
    assert flat["preprocess.image_size"] == 28
    assert flat["evaluate.batch_size"] == 256
    # null learning rates and betas are logged, net by net, as the values in force
    assert (flat["train.g_lr"], flat["train.d_lr"], flat["train.d_beta1"]) == (1e-4, 1e-4, 0.9)
    assert flat["train.lr"] is None  # as params.yaml says
    n_fields = sum(len(type(getattr(params, s)).model_fields) for s in Params.model_fields)
    assert len(flat) == n_fields
    assert all(k.count(".") == 1 for k in flat)


def test_flatten_some_sections() -> None:
    params = parse_params({"train": {"lr": 0.003}})
    flat = flatten(params, ("fetch", "train"))
    assert {k.split(".")[0] for k in flat} == {"fetch", "train"}
    assert (flat["train.lr"], flat["train.g_lr"], flat["train.d_beta1"]) == (0.003, 0.003, 0.5)
    without_train = flatten(params, ("generate",))
    assert set(without_train) == {f"generate.{k}" for k in Params().generate.model_fields}


def test_params_are_frozen() -> None:
    params = parse_params({})
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.train.epochs = 5
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.train = TrainConfig()
    assert params.train.epochs == TrainConfig().epochs


def test_two_time_scales_and_the_shorthand() -> None:
    cfg = TrainConfig(g_lr=4e-3, d_lr=1e-3, d_beta1=0.0)
    assert cfg.optimiser("g") == (4e-3, 0.5) and cfg.optimiser("d") == (1e-3, 0.0)
    assert TrainConfig(lr=3e-4, g_lr=1e-3).optimiser("d") == (3e-4, 0.5)  # lr fills in
    flat = flatten(parse_params({"train": {"g_lr": 4e-3, "d_lr": 1e-3}}))
    assert (flat["train.g_lr"], flat["train.d_lr"], flat["train.g_beta1"]) == (4e-3, 1e-3, 0.5)
    with pytest.raises(UserError, match=r"train.lr = 0.001 has no effect: train.g_lr \(0.004\) "
                                        r"and train.d_lr \(0.001\) are both set"):
        parse_params({"train": {"lr": 1e-3, "g_lr": 4e-3, "d_lr": 1e-3}})
