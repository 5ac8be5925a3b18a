"""Typed, validated configuration: params.yaml loaded into frozen pydantic models.

Every stage calls `load_params()` before it does any work, so a bad key stops
the pipeline at its first stage with one line naming the key, the value and
what is allowed. Each field carries a one-line description, which doubles as
the comment on that key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from dcgan.core.errors import UserError
from dcgan.core.train_config import Section, TrainConfig, choices
from dcgan.ingest.sources import SOURCES
from dcgan.nets.architectures import ARCHITECTURES

__all__ = ["Params", "TrainConfig", "flatten", "load_params", "parse_params"]


class FetchConfig(Section):
    dataset: Literal[tuple(SOURCES)] = Field("mnist-5k", description=choices(SOURCES))
    folder: str = Field(
        "data/images", description="directory, .zip or .tar of images (dataset: folder)"
    )
    mirror: str | None = Field(
        None, description="base URL that replaces the canonical download location"
    )

    @model_validator(mode="after")
    def _folder_needs_path(self) -> FetchConfig:
        if self.dataset == "folder" and not self.folder:
            raise ValueError("fetch.folder must name a directory when fetch.dataset is 'folder'")
        if self.mirror is not None and not self.mirror.startswith(("http://", "https://", "file://")):
            raise ValueError(
                f"fetch.mirror = {self.mirror!r} is invalid: must be a URL starting with "
                "http://, https:// or file://"
            )
        return self


class PreprocessConfig(Section):
    image_size: int = Field(28, ge=8, le=256, description="side of the square training images")
    channels: Literal[1, 3] | None = Field(
        None, description="convert to 1 (grey) or 3 (RGB) channels; null keeps the dataset's"
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of images held out as test")
    val_size: int = Field(
        500, ge=0, le=1_000_000,
        description="training images set aside to score epochs during training (keep-best, "
                    "early stopping); 0 = none",
    )
    seed: int = Field(0, ge=0, description="seed of the train/validation/test split")
    skip_unreadable: bool = Field(
        False, description="leave out images that cannot be decoded (with a warning)"
    )


class ClassifierConfig(Section):
    epochs: int = Field(5, ge=1, le=1000, description="epochs of the evaluation classifier")
    batch_size: int = Field(128, ge=1, le=65536, description="classifier batch size")
    feature_dim: int = Field(64, ge=2, le=4096, description="width of its penultimate layer")
    seed: int = Field(0, ge=0, description="seed of classifier training")


class GenerateConfig(Section):
    num_samples: int = Field(1000, ge=1, le=1_000_000, description="samples written to disk")
    seed: int = Field(123, ge=0, description="seed of the sampled noise")
    grid_rows: int = Field(8, ge=1, le=32, description="rows (and columns) of the sample grid")
    interp_steps: int = Field(10, ge=2, le=64, description="images per latent-interpolation row")


class EvaluateConfig(Section):
    batch_size: int = Field(256, ge=1, le=65536, description="batch of feature extraction")
    seed: int = Field(0, ge=0, description="seed of subsampling, KID subsets and the ceilings")
    kid_subsets: int = Field(100, ge=1, le=10000, description="random subsets KID averages over")
    kid_subset_size: int = Field(
        500, ge=2, le=100000,
        description="images per KID subset (capped at N; below N, so that subsets differ)",
    )
    mode_min_share: float = Field(
        0.25, gt=0, le=1,
        description="a class is covered if its share of samples is >= this x its real share",
    )
    inception: str | None = Field(
        None,
        description="InceptionV3 weights file (.h5) for true FID/IS, 'download', or null = off",
    )


class ProbeConfig(Section):
    train_sizes: list[Annotated[int, Field(ge=2)]] = Field(
        [100, 1000], min_length=1, max_length=10,
        description="labelled training images the linear probe is fitted on (each size)",
    )
    seed: int = Field(0, ge=0, description="seed of the labelled subsets and the random D")


class Params(Section):
    fetch: FetchConfig = FetchConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    probe: ProbeConfig = ProbeConfig()

    @model_validator(mode="after")
    def _size_fits_arch(self) -> Params:
        size, arch = self.preprocess.image_size, self.train.arch
        if not ARCHITECTURES[arch].fits(size):
            raise ValueError(
                f"preprocess.image_size = {size} cannot be produced by train.arch '{arch}': "
                f"it must be {ARCHITECTURES[arch].sizes}"
            )
        return self

    @model_validator(mode="after")
    def _scores_need_validation(self) -> Params:
        if self.train.eval_every and not self.preprocess.val_size:
            raise ValueError(
                f"train.eval_every = {self.train.eval_every} scores epochs on validation "
                "images, but preprocess.val_size = 0 sets none aside; set "
                "preprocess.val_size (e.g. 500) or train.eval_every: 0"
            )
        return self


def _describe(error: dict[str, Any]) -> str:
    """One line for one pydantic error: key, bad value, what is allowed."""
    key = ".".join(str(part) for part in error["loc"])
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        section = _section_model(error["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "see params.yaml"
        return f"{key} is not a known key (allowed: {allowed})"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    value = error.get("input")
    if kind == "model_type":  # pydantic adds "or instance of TrainConfig": our class name
        return f"{key} = {value!r} is invalid: must be a valid dictionary of {key}'s keys"
    if kind == "literal_error":
        msg = msg.replace("Input should be", "must be")
    else:
        msg = msg.replace("Input should be", "must be").replace("Input", "value")
    return f"{key} = {value!r} is invalid: {msg}"


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return None
        model = field.annotation
    return model


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping (`raw`, read from YAML; None counts as empty) into
    the frozen `Params`; `source` is the file name that error messages give.

    Raises:
        UserError: one line naming the first bad key, its value and what is allowed.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise UserError(f"{source}: top level must be a mapping of sections, got {kind}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"{source}: {_describe(first)}") from None


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `2e-4` as a float, as YAML 1.2 (and DVC) do; YAML 1.1
    wants a dot in the mantissa and would read it as a string."""


_FLOAT = r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT),
                                    list("-+0123456789."))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file.

    Raises:
        UserError: if the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run from the repo root or pass --params") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: {_yaml_problem(err)}") from None
    return parse_params(raw, source=str(path))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: where, what, and the fix."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    problem = getattr(err, "problem", None) or ""
    if problem.startswith("could not determine a constructor for the tag"):
        # The safe loader knows no tags that build objects (!!python/object...): they run code.
        tag = problem.rsplit(" ", 1)[-1].replace("tag:yaml.org,2002:", "!!")
        return (f"YAML tag {tag}{where} is not allowed: params hold plain values only "
                "(numbers, strings, lists, mappings); remove the tag")
    detail = f" ({problem})" if problem else ""
    return f"not valid YAML{where}{detail}; fix the syntax"


def flatten(params: Params, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The resolved params as flat `section.key` pairs, for MLflow and logs.

    Args:
        params: validated params.
        sections: which sections to include; None for all.
    """
    flat = {}
    for section, values in params.model_dump().items():
        if sections is None or section in sections:
            flat.update({f"{section}.{key}": value for key, value in values.items()})
    if "train.lr" in flat:  # each net's values in force, where params.yaml says null
        train = params.train
        flat["train.g_lr"], flat["train.g_beta1"] = train.optimiser("g")
        flat["train.d_lr"], flat["train.d_beta1"] = train.optimiser("d")
    return flat
