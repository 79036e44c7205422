"""The config of the learned route: the ``image`` pseudo-route and classifiers that learn from images.

Imported by :mod:`radiodeep.config` (without torch). An experiment with ``features: [image]``
names one of :data:`LEARNED_CLASSIFIERS` as its classifier::

    - name: flair-finetune
      features: [image]
      classifier:
        name: cnn_finetune
        backbone: efficientnet_lite0
        epochs: 10
        lr: 1.0e-5
        lr_schedule: {step: 4, gamma: 0.1}
        freeze: none
        batch_size: 16
        augment: {rotate_deg: 15, flip: [horizontal, vertical]}

``cnn_finetune_features`` fine-tunes the same way, then hands a layer's activations
(``layer: fc7``) to the experiment's ``select`` and to the classifier in ``then``
(a random forest by default), all inside each fold.

New learned classifiers: add the config class to :data:`LEARNED_CONFIGS` (its ``name`` a
``Literal``) and its builder to :mod:`radiodeep.learned.build`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

__all__ = ["AugmentConfig", "LrScheduleConfig", "ImageConfig", "CNNFinetuneConfig", "CNNFinetuneFeaturesConfig",
           "CNNScratchConfig", "CNNEnsembleConfig",
           "LEARNED_CONFIGS", "LEARNED_CLASSIFIERS", "LearnedClassifierConfig", "classifier_field",
           "check_experiment", "check_config", "is_learned"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class ImageConfig(_Strict):
    """The ``image`` pseudo-route: the ROI stage's tensor of each case (``roi`` settings), cached."""

    channels: Literal["r", "g", "b", "grey3", "ct_windows", "slices", "sequences"] = Field(
        "grey3", description="channel strategy of the ROI stage (one 3-channel view per case)")


class AugmentConfig(_Strict):
    mode: Literal["random", "grid", "circle", "circle_random"] = "random"
    rotate_deg: float | list[float] = Field(
        0.0, description="random: largest angle (degrees); grid: a number r -> [-r, 0, r], or a list of angles; "
                         "circle / circle_random: the step around the full circle (15 -> 24 angles)")
    flip: list[Literal["horizontal", "vertical"]] = Field(default_factory=list)
    fill: Literal["zeros", "border", "reflection"] = "zeros"

    @model_validator(mode="after")
    def _list_for_grid(self):
        if self.mode == "random" and isinstance(self.rotate_deg, list):
            raise ValueError("rotate_deg is a list of angles only with mode: grid; with mode: random give "
                             "the largest angle (a number)")
        return self


class LrScheduleConfig(_Strict):
    step: int = Field(4, ge=1, description="epochs between two learning-rate reductions")
    gamma: float = Field(0.1, gt=0, le=1, description="factor applied every 'step' epochs")


class CNNFinetuneConfig(_Strict):
    """Fine-tune a deep-route backbone (new two-unit head) on each fold's training cases."""

    name: Literal["cnn_finetune"]
    backbone: str = "alexnet"
    weights: str | None = Field("IMAGENET1K_V1", description="as features.deep.weights (null: random, tests only)")
    epochs: int = Field(10, ge=1, le=10000)
    lr: float = Field(1e-5, gt=0)
    lr_schedule: LrScheduleConfig | None = Field(default_factory=LrScheduleConfig,
                                                 description="the published {step: 4, gamma: 0.1} by default")
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    freeze: str = Field("none", description="none | features | a layer (alias or module path): it and all before it")
    batch_size: int = Field(16, ge=1, le=4096)
    augment: AugmentConfig | None = None
    seed: int | None = Field(None, description="None: evaluation.seed")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    train_split: float | None = Field(None, gt=0, lt=1, description="inner validation fraction (None: off)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while training")


class CNNFinetuneFeaturesConfig(CNNFinetuneConfig):
    """Fine-tune, take a layer's activations, then the experiment's selector and ``then``'s classifier."""

    name: Literal["cnn_finetune_features"]  # type: ignore[assignment]
    layer: str = Field("fc7", description="fc6 | fc7 | penultimate | a module path")
    activation: Literal["pre_relu", "post_relu"] = "post_relu"
    then: Any = Field(default_factory=lambda: {"name": "random_forest"},
                      description="the classifier on the fine-tuned features (any frozen-route classifier)")

    @field_validator("then", mode="before")
    @classmethod
    def _then(cls, v):
        from ..config import ClassifierConfig

        v = {"name": v} if isinstance(v, str) else v
        return v if isinstance(v, ClassifierConfig) else ClassifierConfig.model_validate(v)


class _ScratchTraining(_Strict):
    """Training settings of CNNs trained from scratch (radiodeep/learned/scratch.py)."""

    epochs: int = Field(20, ge=1, le=10000)
    lr: float = Field(1e-3, gt=0, le=10)
    lr_schedule: LrScheduleConfig | None = Field(None, description="None: constant learning rate")
    optimizer: Literal["sgd", "adam"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(64, ge=1, le=4096)
    augment: AugmentConfig | None = None
    input_size: int | None = Field(None, ge=8, description="network input side (None: roi.size); a larger "
                                                          "roi.size is cut to its centre (rotation margin)")
    channels: list[int] | None = Field(None, description="which channels of the ROI tensor (0-2) the network "
                                                         "takes (None: all three)")
    train_split: float | None = Field(None, gt=0, lt=1, description="inner validation fraction of each training "
                                                                    "fold (the published 0.3); None: off")
    early_stopping: int | None = Field(None, ge=1, description="patience (epochs) on the inner validation loss")
    seed: int | None = Field(None, description="None: evaluation.seed")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads while training")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v):
        if v is not None and (not v or len(set(v)) != len(v) or any(c not in (0, 1, 2) for c in v)):
            raise ValueError(f"channels: distinct indices among 0, 1, 2, got {v}")
        return v

    @model_validator(mode="after")
    def _early(self):
        if self.early_stopping and not self.train_split:
            raise ValueError("early_stopping needs an inner validation split: set train_split (e.g. 0.3)")
        return self


class CNNScratchConfig(_ScratchTraining):
    """One small CNN trained from scratch in every fold (``usf1``, ``usf2``, ``usf3`` or ``package.module:Class``)."""

    name: Literal["cnn_scratch"]
    architecture: str = "usf1"


class CNNEnsembleConfig(_ScratchTraining):
    """``architectures`` x ``seeds`` CNNs trained from scratch in the same fold, combined."""

    name: Literal["cnn_ensemble"]
    architectures: list[str | dict[str, Any]] = Field(default_factory=lambda: ["usf1", "usf2", "usf3"], min_length=1)
    seeds: int | list[int] = Field(1, description="a count N (seeds seed..seed+N-1) or a list of seeds")
    combine: Literal["average", "median", "vote", "all"] | list[Literal["average", "median", "vote"]] = Field(
        "average", description="the first scores the ensemble; a list or 'all' reports each")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"seeds must be at least 1, got {v}")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


LEARNED_CONFIGS: tuple[type[BaseModel], ...] = (CNNFinetuneConfig, CNNFinetuneFeaturesConfig, CNNScratchConfig,
                                                CNNEnsembleConfig)
LEARNED_CLASSIFIERS: tuple[str, ...] = tuple(c.model_fields["name"].annotation.__args__[0] for c in LEARNED_CONFIGS)

LOC_TAGS = frozenset({"learned", "frozen", *LEARNED_CLASSIFIERS})  # branch names pydantic puts in error paths

LearnedClassifierConfig = Annotated[Union[LEARNED_CONFIGS], Field(discriminator="name")]  # type: ignore[valid-type]


def _kind(v) -> str:
    name = v.get("name") if isinstance(v, dict) else getattr(v, "name", None)
    return "learned" if name in LEARNED_CLASSIFIERS else "frozen"


def classifier_field(frozen_model):
    """The type of ``ExperimentConfig.classifier``: a learned classifier or ``frozen_model``."""
    return Annotated[Union[Annotated[LearnedClassifierConfig, Tag("learned")],
                           Annotated[frozen_model, Tag("frozen")]], Discriminator(_kind)]


def is_learned(experiment) -> bool:
    return getattr(experiment.classifier, "name", None) in LEARNED_CLASSIFIERS


def check_experiment(e) -> None:
    """Raise ValueError where an experiment mixes the image route and frozen-route classifiers."""
    learned = is_learned(e)
    if "image" in e.features and not learned:
        raise ValueError(f"route 'image' is the ROI image itself: it needs a classifier that learns from "
                         f"images ({', '.join(LEARNED_CLASSIFIERS)}), not {e.classifier.name!r}")
    if learned and list(e.features) != ["image"]:
        raise ValueError(f"classifier {e.classifier.name!r} learns from the ROI image: set features: [image] "
                         f"(got {list(e.features)})")
    if learned and e.select.method != "none" and e.classifier.name != "cnn_finetune_features":
        raise ValueError(f"classifier {e.classifier.name!r} classifies images; 'select' applies to "
                         "cnn_finetune_features (the fine-tuned layer's activations)")
    if e.select.method != "none" and e.select.k_per_route is not None and learned:
        raise ValueError("select.k_per_route has one route here (the fine-tuned layer): use 'k'")


def check_config(config) -> None:
    """Cross-section checks of the image route (called from ``Config``'s own checks)."""
    image = config.features.image
    if image is None:
        return
    if config.roi.slice == "all":
        raise ValueError("route 'image' takes one slice per case: set roi.slice to largest or centre")
    if image.channels == "sequences" and not config.cohort.sequences:
        raise ValueError("features.image.channels 'sequences' needs cohort.sequences (three manifest columns)")
    if image.channels == "ct_windows" and config.roi.intensity.modality != "CT":
        raise ValueError("features.image.channels 'ct_windows' needs roi.intensity.modality: CT")
