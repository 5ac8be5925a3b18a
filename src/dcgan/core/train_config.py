"""The train section of params.yaml: what the GAN is, how it is optimised, and which of its
generators the stage delivers (the EMA of G, the best epoch's).

`core.config` holds the other sections and loads the whole file; this module is apart only
for its size.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dcgan.nets.architectures import ARCHITECTURES
from dcgan.nets.augment import AUGMENTATIONS, parse_policy
from dcgan.nets.losses import LOSSES
from dcgan.nets.updates import UPDATES


def choices(registry: dict) -> str:
    """`name: description; ...` of a registry's entries, for a field's description."""
    return "; ".join(f"{name}: {entry.description}" for name, entry in registry.items())


class Section(BaseModel):
    """A section of params.yaml."""

    # strict: YAML already gives typed values, so "10" for an int is a mistake, not a number.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _lr(net: str) -> float | None:
    return Field(None, gt=0, le=1, description=f"{net}'s Adam learning rate; null = train.lr")


def _beta1(net: str) -> float | None:
    return Field(None, ge=0, lt=1, description=f"{net}'s Adam beta1; null = train.beta1")


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


class TrainConfig(Section):
    arch: Literal[tuple(ARCHITECTURES)] = Field("paper", description=choices(ARCHITECTURES))
    epochs: int = Field(60, ge=1, le=100000, description="training epochs")
    batch_size: int = Field(128, ge=1, le=65536, description="images per training step")
    lr: float | None = Field(
        None, gt=0, le=1, description="Adam learning rate of G and D; null = the arch's "
                                      "(paper: G 4e-3, D 1e-3)"
    )
    beta1: float | None = Field(
        None, ge=0, lt=1, description="Adam beta1 of G and D; null = the arch's (paper 0.5)"
    )
    g_lr: float | None = _lr("G")
    d_lr: float | None = _lr("D")
    g_beta1: float | None = _beta1("G")
    d_beta1: float | None = _beta1("D")
    latent_dim: int = Field(100, ge=1, le=4096, description="size of the noise vector z")
    g_filters: int = Field(64, ge=1, le=2048, description="paper arch: G's last hidden width")
    d_filters: int = Field(64, ge=1, le=2048, description="paper arch: D's first layer width")
    seed: int = Field(42, ge=0, description="seed of weights, noise and data order")
    precision: Literal["auto", "float32", "mixed_bfloat16"] = Field(
        "auto", description="Keras dtype policy; auto: mixed_bfloat16 where bfloat16 is "
                            "native (GPU sm_80+, CPU AVX512_BF16 or AMX), else float32"
    )
    update: Literal[tuple(UPDATES)] = Field("alternating", description=choices(UPDATES))
    loss: Literal[tuple(LOSSES)] = Field("non_saturating", description=choices(LOSSES))
    augment: str = Field(
        "", description="DiffAugment policy, applied to every image D sees: a comma-separated "
                        f"list of {', '.join(AUGMENTATIONS)}; '' = off")
    lecam: float = Field(
        0.0, ge=0, le=100, description="weight of LeCam's regulariser on D's loss (Tseng et al. "
                                       "2021); 0 = off")
    steps_per_execution: int = Field(
        1, ge=1, le=1000, description="train steps per call of the compiled train function"
    )
    distribution: Literal["auto", "none", "mirrored", "multi_worker"] = Field(
        "auto",
        description="auto: all local GPUs if several, else one device; none: one device; "
                    "mirrored: tf.distribute.MirroredStrategy over local devices; "
                    "multi_worker: MultiWorkerMirroredStrategy, cluster from TF_CONFIG",
    )
    ema_half_life: int = Field(
        10000, ge=0, le=10**9,
        description="EMA of G's weights: images after which an old weight counts half; 0 = off",
    )
    ema_rampup: float | None = Field(
        0.1, gt=0, le=1,
        description="early on, the half-life is at most this x the images seen; null = none",
    )
    eval_every: int = Field(
        5, ge=0, le=100000,
        description="Fréchet distance of a fixed sample every this many epochs; 0 = off",
    )
    keep_best: bool = Field(
        True, description="deliver the generator of the epoch with the lowest Fréchet distance"
    )
    early_stop_patience: int = Field(
        0, ge=0, le=100000,
        description="stop after this many evaluations in a row without a better Fréchet "
                    "distance, or at collapse; 0 = off",
    )
    collapse_patience: int = Field(
        5, ge=0, le=100000,
        description="warn when D's loss stays below its loss's collapse level (nets.losses) "
                    "this many epochs; 0 = off",
    )

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, value: str) -> str:
        try:
            parse_policy(value)
        except ValueError as err:
            raise ValueError(f"train.augment = {value!r} is invalid: {err}") from None
        return value

    @model_validator(mode="after")
    def _shorthand_in_use(self) -> TrainConfig:
        for key, g_key, d_key in (("lr", "g_lr", "d_lr"), ("beta1", "g_beta1", "d_beta1")):
            value, own = getattr(self, key), (getattr(self, g_key), getattr(self, d_key))
            if value is not None and None not in own:
                raise ValueError(
                    f"train.{key} = {value} has no effect: train.{g_key} ({own[0]}) and "
                    f"train.{d_key} ({own[1]}) are both set; change those, or set them to "
                    f"null to use {key} for both")
        return self

    @model_validator(mode="after")
    def _selection_needs_scores(self) -> TrainConfig:
        for key, on in (("keep_best", self.keep_best),
                        ("early_stop_patience", self.early_stop_patience > 0)):
            if on and self.eval_every == 0:
                raise ValueError(
                    f"train.{key} needs train.eval_every > 0: it works on the Fréchet distance "
                    "measured every eval_every epochs; set eval_every (e.g. 5) or turn "
                    f"{key} off")
        return self

    def optimiser(self, net: Literal["g", "d"]) -> tuple[float, float]:
        """(learning rate, beta1) of `net`'s Adam: its own `g_lr`/`d_lr` and `g_beta1`/
        `d_beta1` where set (two time-scales, Heusel et al. 2017), else `lr` and `beta1`,
        else the arch's (`Architecture.adam`)."""
        (g_lr, d_lr), beta1 = ARCHITECTURES[self.arch].adam
        return (_first(getattr(self, f"{net}_lr"), self.lr, g_lr if net == "g" else d_lr),
                _first(getattr(self, f"{net}_beta1"), self.beta1, beta1))

    @property
    def ema(self) -> bool:
        """Whether an exponential moving average of G is kept (and delivered)."""
        return self.ema_half_life > 0
