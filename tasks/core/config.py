"""One typed config for the whole pipeline, loaded from ``params.yaml``.

Sections mirror the stages. Unknown keys are errors, so a typo in ``params.yaml`` or
``--set`` fails loudly instead of being ignored; the method name and its
hyperparameters are checked against the method itself, before any stage runs.

**One source of defaults.** The science's own dataclasses (``ViewPolicy``,
``TrainSettings``, ``FinetuneSettings``) hold the defaults of the knobs they own; the
sections below read them from there (:func:`_default`). ``params.yaml`` is written from
these sections (``sslpipe generate``), and a test fails when the committed file differs.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ssl_models.augment import ViewPolicy, recipe_for_size
from ssl_models.device import resolve_device
from ssl_models.finetune import FinetuneSettings
from ssl_models.launch import already_launched, resolve_processes
from ssl_models.text import TextModelSettings
from ssl_models.training import TrainSettings


def _default(cls: type, name: str) -> Any:
    """The default of dataclass field ``cls.name``: the one place it is written."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    unlabeled: str = Field("data/sample/unlabeled.tar.gz", description="unlabeled images: folder, tar archive, or torchvision:NAME")
    labeled: str = Field(
        "data/sample/labeled.tar.gz", description="labeled evaluation images: train/<class>/ + test/<class>/, or <class>/ only"
    )
    image_size: int = Field(32, ge=8, description="images are centre-cropped and resized to this side")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="test share when the labeled set has no train/test split")
    text_columns: list[str] | None = Field(
        None, description="text sources (.csv): the columns holding the text; null: every column but label_column"
    )
    label_column: str = Field("label", description="text sources: the label column of a labeled .csv (a .jsonl's field is `label`)")


Conversion = Literal["grayscale", "alpha", "palette", "cmyk", "high_bit_depth", "resize"]


class ValidateConfig(Section):
    min_images: int = Field(16, ge=1, description="fewest images or documents (after quarantine) worth training on")
    min_side: int = Field(8, ge=1, description="pixels; smaller is a fault (too_small)")
    max_side: int = Field(4096, ge=1, description="pixels; larger is a fault (too_large)")
    allowed_formats: list[str] = Field(["JPEG", "PNG", "WEBP", "BMP"], description="read from the content, not the extension")
    allow_duplicates: bool = Field(False, description="exact duplicates (same bytes): later copies are faults")
    on_fail: Literal["stop", "quarantine"] = Field(
        "stop", description="stop: no training if any file is bad | quarantine: leave bad files out"
    )
    max_bad_fraction: float = Field(0.05, ge=0, le=1, description="quarantine: train only if at most this share is bad")
    convert: list[Conversion] = Field(
        ["grayscale", "alpha", "palette", "cmyk", "high_bit_depth", "resize"],
        description="turned into RGB at data.image_size instead of failing",
    )
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb guard: larger images are never decoded (fault: bomb)")
    blank_std: float = Field(0.01, ge=0, description="every channel's std (0..1) at or below this: blank")
    drift_tolerance: float | None = Field(0.1, gt=0, description="dataset mean/std per channel vs data/reference_stats.json; null: off")
    workers: int = Field(0, ge=0, description="image-reading processes; 0: one per core, when it pays")
    min_chars: int = Field(8, ge=1, description="text: a shorter document is a fault (too_short)")
    max_chars: int = Field(100_000, ge=1, description="text: a longer document is a fault (too_long)")
    max_control_share: float = Field(
        0.05, ge=0, le=1, description="text: a larger share of control characters or NUL bytes is binary content"
    )
    length_drift_tolerance: float | None = Field(
        0.25, gt=0, description="text: relative change of the mean length in words vs the reference; null: off"
    )
    vocab_drift_tolerance: float | None = Field(
        0.1, gt=0, description="text: rise of the out-of-vocabulary share vs the reference; null: off"
    )


# Knobs whose value depends on the image size: "auto" takes SimCLR's recipe for
# data.image_size (ssl_models.augment.recipe_for_size: CIFAR's below 96 px, ImageNet's from 96).
Share = Annotated[float, Field(ge=0, le=1)]
Auto = Literal["auto"]


class AugmentConfig(Section):
    """SimCLR's view policy (defaults: ``ssl_models.augment.ViewPolicy``; ``auto``: ``recipe_for_size``)."""

    crop_scale_min: Annotated[float, Field(gt=0, le=1)] | Auto = Field(
        "auto", description="random resized crop: smallest area share; auto: 0.2 below 96 px, 0.08 from 96"
    )
    flip_p: float = Field(_default(ViewPolicy, "flip_p"), ge=0, le=1)
    jitter_p: float = Field(_default(ViewPolicy, "jitter_p"), ge=0, le=1)
    brightness: Annotated[float, Field(ge=0)] | Auto = Field(
        "auto", description="auto: 0.4 below 96 px, 0.8 from 96 (jitter strength 0.5 / 1)"
    )
    contrast: Annotated[float, Field(ge=0)] | Auto = Field("auto", description="auto: as brightness")
    saturation: Annotated[float, Field(ge=0)] | Auto = Field("auto", description="auto: as brightness")
    hue: Annotated[float, Field(ge=0, le=0.5)] | Auto = Field("auto", description="auto: 0.1 below 96 px, 0.2 from 96")
    grayscale_p: float = Field(_default(ViewPolicy, "grayscale_p"), ge=0, le=1)
    blur_p: Share | Auto = Field("auto", description="auto: 0 below 96 px (blur hurts CIFAR-sized images), 0.5 from 96")
    local_crops: Annotated[int, Field(ge=0, le=16)] | Auto = Field(
        "auto", description="multi-crop: small crops per image besides the two views; auto: the method's (0 = off for most)"
    )
    local_crop_size: Annotated[int, Field(ge=8, le=512)] | Auto = Field(
        "auto", description="px; auto: 3/7 of data.image_size in multiples of 8, at least 16 (96 at 224, 16 at 32)"
    )
    local_crop_scale: tuple[Share, Share] = Field(_default(ViewPolicy, "local_scale"), description="area share of a local crop (min, max)")
    preview_images: int = Field(8, ge=1, le=64, description="images in reports/augment_preview.png")

    def resolved(self, image_size: int, method: str) -> AugmentConfig:
        """Every ``auto`` replaced by SimCLR's recipe for ``image_size`` and the method's number of
        local crops (what MLflow records)."""
        from ssl_models.methods import default_local_crops  # only here: config must not import every method

        recipe = recipe_for_size(image_size)
        recipe_values = {
            **dataclasses.asdict(recipe),
            "crop_scale_min": recipe.crop_scale[0],
            "local_crop_size": recipe.local_size,
            "local_crops": default_local_crops(method),
        }
        return self.model_copy(update={key: recipe_values[key] for key, value in self if value == "auto"})

    def policy(self, image_size: int, method: str) -> ViewPolicy:
        values = self.resolved(image_size, method)
        fields = values.model_dump(exclude={"crop_scale_min", "preview_images", "local_crop_size", "local_crop_scale"})
        return ViewPolicy(
            size=image_size,
            crop_scale=(values.crop_scale_min, 1.0),
            local_size=values.local_crop_size,
            local_scale=values.local_crop_scale,
            **fields,
        )


class PretrainConfig(Section):
    """Optimisation defaults: ``ssl_models.training.TrainSettings``; ``auto``: the method's recommendation."""

    method: str = Field("simclr", description="SSL method (docs/methods.md)")
    method_params: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the method's own defaults, e.g. {temperature: 0.5}"
    )
    backbone: str = Field("auto", description="auto = the method's preferred backbone")
    width: int = Field(16, ge=4, description="ResNet base width: 16 on a CPU, 64 (the paper's) on a GPU")
    init: str | None = Field(
        None,
        description="start from these weights: a .pt/.safetensors state_dict, timm:NAME or torchvision:NAME (their pretrained "
        "weights, downloaded), or models:/NAME@ALIAS; null: a random init",
    )
    epochs: int = Field(_default(TrainSettings, "epochs"), ge=1)
    batch_size: int = Field(_default(TrainSettings, "batch_size"), ge=2)
    optimizer: Literal["auto", "sgd", "adamw"] = Field("auto", description="auto = the method's recommendation (MAE: adamw), else sgd")
    lr: float | Literal["auto"] = Field("auto", description="for batch 256, scaled linearly; auto = the method's, else TrainSettings'")
    weight_decay: float | Literal["auto"] = Field("auto", description="auto = the method's, else TrainSettings'")
    warmup_epochs: int = Field(_default(TrainSettings, "warmup_epochs"), ge=0)
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N")
    seed: int = _default(TrainSettings, "seed")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        _default(TrainSettings, "precision"), description="auto = bf16 autocast on CUDA, fp32 on the CPU (bf16 is slower there)"
    )
    compile: bool | Literal["auto"] = Field(
        _default(TrainSettings, "compile"),
        description="torch.compile the model (faster steps after minutes of compiling); auto: when the run is long enough to pay",
    )
    checkpoint_every_steps: int = Field(
        _default(TrainSettings, "checkpoint_every_steps"), ge=0, description="0: a resume checkpoint after every epoch only"
    )
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="data-parallel training processes (batch_size is the global batch); auto = one per GPU, 1 without"
    )

    @model_validator(mode="after")
    def _method_exists(self) -> PretrainConfig:
        check_method(self.method, self.method_params)
        return self

    def resolved(self) -> PretrainConfig:
        """Every ``auto`` replaced by the value that will be used (what MLflow records)."""
        from ssl_models.methods import method_class

        method = method_class(self.method)
        recommended = getattr(method, "recommended", {})

        def pick(key: str) -> Any:
            value = getattr(self, key)
            return value if value != "auto" else recommended.get(key, _default(TrainSettings, key))

        return self.model_copy(
            update={
                "backbone": method.backbones[0] if self.backbone == "auto" else self.backbone,
                "optimizer": pick("optimizer"),
                "lr": pick("lr"),
                "weight_decay": pick("weight_decay"),
                "device": str(resolve_device(self.device)),
                "precision": self.precision
                if self.precision != "auto"
                else ("bf16" if resolve_device(self.device).type == "cuda" else "fp32"),
                "processes": self._processes(),
            }
        )

    def _processes(self) -> int:
        if already_launched():  # under torchrun, torchrun's count is the one used
            return int(os.environ["WORLD_SIZE"])
        # auto: one process per GPU when training on GPUs; on the CPU one process already
        # uses every core, so more would only split them (benchmarks/results/distributed-cpu.json).
        if self.processes == "auto" and resolve_device(self.device).type != "cuda":
            return 1
        return resolve_processes(self.processes)

    def settings(self) -> TrainSettings:
        """The training loop's settings; call on a :meth:`resolved` config."""
        names = {f.name for f in dataclasses.fields(TrainSettings)}
        return TrainSettings(**self.model_dump(include=names))


def check_method(name: str, params: dict[str, Any]) -> None:
    """The method exists and takes every hyperparameter given; the message lists what is valid."""
    from ssl_models.methods import METHODS, TEXT_METHODS

    known = METHODS | TEXT_METHODS
    if name not in known:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(known))}")
    # continuation_ids come from the tokenizer (text.whole_word... is MLM's whole_word), never from the params.
    accepted = [p for p in inspect.signature(known[name]).parameters if p not in ("encoder", "views", "continuation_ids")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{name} has no hyperparameter {', '.join(map(repr, unknown))}; valid: {', '.join(accepted) or 'none'}")


class TextConfig(Section):
    """Text sources (``pretrain.method: mlm``): the tokenizer, the encoder and its MLM training.

    Defaults: ``ssl_models.text.TextModelSettings``. For text these replace ``pretrain``'s
    epochs, batch size, lr, weight decay and warm-up (sized for images); MLM's own knobs
    (``mask_prob``, ``whole_word``, ...) go in ``pretrain.method_params`` as for every method.
    """

    vocab_size: int = Field(_default(TextModelSettings, "vocab_size"), ge=100, description="BPE tokenizer trained on the unlabeled text")
    max_len: int = Field(
        _default(TextModelSettings, "max_len"), ge=8, description="tokens per document ([CLS] ... [SEP]); longer ones are cut"
    )
    dim: int = Field(_default(TextModelSettings, "dim"), ge=8, description="Transformer width")
    depth: int = Field(_default(TextModelSettings, "depth"), ge=1, description="Transformer blocks")
    heads: int | None = Field(_default(TextModelSettings, "heads"), ge=1, description="attention heads; null: dim // 32")
    epochs: int = Field(_default(TextModelSettings, "epochs"), ge=1)
    batch_size: int = Field(_default(TextModelSettings, "batch_size"), ge=2)
    lr: float = Field(_default(TextModelSettings, "lr"), gt=0, description="AdamW, for batch 256, scaled linearly")
    weight_decay: float = Field(_default(TextModelSettings, "weight_decay"), ge=0)
    warmup_epochs: int = Field(_default(TextModelSettings, "warmup_epochs"), ge=0)

    def settings(self, seed: int, method_params: dict[str, Any]) -> TextModelSettings:
        """The text stages' settings; MLM's own arguments come from ``pretrain.method_params``."""
        params = dict(method_params)
        known = {k: params.pop(k) for k in ("mask_prob", "whole_word") if k in params}
        return TextModelSettings(**self.model_dump(), seed=seed, method_params=params, **known)


class EvaluateConfig(Section):
    knn_k: int = Field(20, ge=1, description="weighted kNN on cosine similarity")
    knn_temperature: float = Field(0.07, gt=0)
    probe_weight_decays: list[float] = Field([1e-4, 1e-3, 1e-2, 1e-1, 1.0], description="L2 strengths tried on a validation split")
    probe_validation_fraction: float = Field(0.2, gt=0, lt=1)
    label_fractions: list[float] = Field(
        [0.01, 0.1, 1.0], description="label-efficiency curve: fine-tune vs from scratch (recipe: the finetune section)"
    )
    embedding_points: int = Field(1000, ge=10, description="test images (at most) in the t-SNE picture")

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in value):
            raise ValueError(f"every label fraction must be in (0, 1], got {value}")
        # 100% is always on the curve: from scratch there is the supervised reference.
        return sorted(set(value) | {1.0})


class RegisterConfig(Section):
    model_name: str = Field("ssl-encoder", description="image encoders register here")
    text_model_name: str = Field("ssl-text-encoder", description="text encoders register here: the gate compares like with like")
    alias: str = Field("challenger", description="every registered version gets this alias")
    experiment: str = "ssl-pipeline"
    champion_alias: str = Field("champion", description="moved only by the promotion gate, promote, rollback")
    min_improvement: float = Field(0.0, ge=0, description="probe accuracy a challenger must gain over the champion to replace it")


class FinetuneConfig(Section):
    """The supervised recipe (also the label-efficiency curve's) and `sslpipe finetune`.

    Defaults: ``FinetuneSettings``. ``optimizer`` and ``lr`` are null by default: each modality
    takes its own (images ``FinetuneSettings``': SGD at 0.05; text ``ssl_models.finetune.TEXT_FINETUNE``:
    AdamW at 5e-4, as a Transformer needs); a value set here is used for both.
    ``crop_scale_min`` and ``flip_p`` are the images' augmentation; text has none.
    """

    data: str = Field(
        "data/sample/labeled.tar.gz", description="labeled images for `sslpipe finetune`: <class>/ folders, or train/ + test/"
    )
    encoder_alias: str = Field("champion", description="fine-tunes models:/<register.model_name>@<this>")
    label_fraction: float = Field(1.0, gt=0, le=1, description="share of the train labels the classifier learns from")
    compare_fraction: float | None = Field(0.1, gt=0, le=1, description="also fine-tune and train from scratch on this share; null: skip")
    steps: int = Field(
        _default(FinetuneSettings, "steps"), ge=1, description="the same at every label fraction; sized for 2 CPU cores: raise on a GPU"
    )
    batch_size: int = Field(_default(FinetuneSettings, "batch_size"), ge=2)
    optimizer: Literal["sgd", "adamw"] | None = Field(
        None, description="sgd: Nesterov momentum 0.9; null: the modality's (images sgd, text adamw)"
    )
    lr: float | None = Field(
        None, gt=0, description="peak after the warm-up, cosine decay to zero; null: the modality's (images 0.05, text 5e-4)"
    )
    weight_decay: float = Field(_default(FinetuneSettings, "weight_decay"), ge=0)
    warmup_steps: int = Field(_default(FinetuneSettings, "warmup_steps"), ge=0)
    crop_scale_min: float = Field(_default(FinetuneSettings, "crop_scale_min"), gt=0, le=1)
    flip_p: float = Field(_default(FinetuneSettings, "flip_p"), ge=0, le=1)
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N")
    seed: int = _default(FinetuneSettings, "seed")
    model_name: str = "ssl-classifier"
    text_model_name: str = Field("ssl-text-classifier", description="classifiers fine-tuned on text register here")
    alias: str = Field("candidate", description="every new classifier version gets it (no gate for classifiers: move it by hand)")
    experiment: str = "ssl-finetune"

    @field_validator("alias")
    @classmethod
    def _alias_mlflow_takes(cls, value: str) -> str:
        import re

        if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value) or not re.fullmatch(r"[\w-]+", value):
            raise ValueError(f"{value!r}: MLflow reserves 'latest' and 'v<number>'; an alias is letters, digits, '_' and '-'")
        return value

    def resolved(self) -> FinetuneConfig:
        return self.model_copy(update={"device": str(resolve_device(self.device))})

    def settings(self, defaults: FinetuneSettings) -> FinetuneSettings:
        """The loop's settings: ``defaults`` (the modality's recipe) with every key set here."""
        names = {f.name for f in dataclasses.fields(FinetuneSettings)}
        return dataclasses.replace(defaults, **{k: v for k, v in self.model_dump(include=names).items() if v is not None})


class SelectConfig(Section):
    """The embed stage and `sslpipe select` / `similar`: the pool's embeddings, near-duplicates,
    outliers and the shortlist of what to label next (algorithms: ssl_models/selection.py)."""

    batch_size: int = Field(512, ge=1, description="items embedded per batch, read from the shards")
    neighbors: int = Field(10, ge=1, description="nearest neighbours kept per item (index search): duplicates and local density")
    duplicate_threshold: float = Field(
        0.95, gt=0, le=1, description="cosine similarity at or above which two items are near-duplicates (calibrated: README)"
    )
    outliers: int = Field(50, ge=1, description="rows in reports/selection/outliers.csv (lowest local density first)")
    budget: int = Field(100, ge=1, description="items in the stage's shortlist (reports/selection/selected.csv); capped at the pool")
    strategy: Literal["typiclust", "kcenter", "random"] = Field("typiclust", description="the one measured best at the smallest budget")
    seed: int = 0
    picture_items: int = Field(16, ge=1, le=64, description="pairs, outliers and shortlisted items drawn in the pictures")
    efficiency_budgets: list[int] = Field([1, 2, 5], description="label-efficiency check: labels per class each strategy picks")
    efficiency_seeds: int = Field(3, ge=1, description="seeds per strategy and budget (mean and spread)")
    probe_weight_decay: float = Field(0.1, gt=0, description="the probe's L2 on a few labels (none left to validate on)")


class PipelineConfig(Section):
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    augment: AugmentConfig = AugmentConfig()
    pretrain: PretrainConfig = PretrainConfig()
    text: TextConfig = TextConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    finetune: FinetuneConfig = FinetuneConfig()
    select: SelectConfig = SelectConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    _modality: Literal["image", "text"] | None = PrivateAttr(None)  # decided by load_config

    def __eq__(self, other: object) -> bool:  # the values, not the cached modality
        return isinstance(other, PipelineConfig) and self.as_dict() == other.as_dict()

    # "validate" and "register" are names pydantic's BaseModel already uses, so those
    # sections are stored as validate_ / register_ and read through these properties.
    @property
    def validate(self) -> ValidateConfig:  # type: ignore[override]
        return self.validate_

    @property
    def register(self) -> RegisterConfig:  # type: ignore[override]
        return self.register_

    @model_validator(mode="after")
    def _local_crops_fit_the_method(self) -> PipelineConfig:
        from ssl_models.methods import uses_local_crops

        crops = self.augment.local_crops
        if crops != "auto" and crops > 0 and not uses_local_crops(self.pretrain.method):
            raise ValueError(
                f"augment.local_crops={crops}: method {self.pretrain.method!r} does not use local crops "
                "(dino, ibot, swav, simclr, byol and nnclr do; docs/methods.md); set it to 0 or auto"
            )
        return self

    def views(self) -> ViewPolicy:
        """The view policy pretraining draws from: the augment section at ``data.image_size``, for ``pretrain.method``."""
        return self.augment.policy(self.data.image_size, self.pretrain.method)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    def resolved(self) -> PipelineConfig:
        """The config with no ``auto`` left: the values a run really uses."""
        return self.model_copy(
            update={
                "augment": self.augment.resolved(self.data.image_size, self.pretrain.method),
                "pretrain": self.pretrain.resolved(),
                "finetune": self.finetune.resolved(),
            }
        )

    def modality(self, root: str | Path = ".", source: str | None = None) -> Literal["image", "text"]:
        """The modality follows the source (``data.unlabeled`` unless another is given): text for a
        .txt/.jsonl/.csv(.gz) file or a folder of .txt files, else images. Decided once for
        ``data.unlabeled`` when the config is loaded (:func:`load_config`), then carried along."""
        from tasks.core.layout import Layout
        from tasks.text.sources import is_text_source

        if source is None and self._modality is not None:
            return self._modality
        return "text" if is_text_source(Layout.at(root).source(source or self.data.unlabeled)) else "image"

    def model_name(self, modality: str) -> str:
        """The registered encoder of this modality: the promotion gate only compares within one."""
        return self.register.text_model_name if modality == "text" else self.register.model_name

    def section(self, name: str) -> dict[str, Any]:
        return self.as_dict()[name]

    def flat(self) -> dict[str, Any]:
        """Dotted keys, e.g. {"pretrain.epochs": 15}: the form MLflow params take."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            else:
                out[prefix] = value

        walk("", self.as_dict())
        return out


class ConfigError(ValueError):
    """params.yaml or an override is wrong; the message says where and how."""


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` to a nested dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. pretrain.epochs=5")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: {key.strip()!r} is not a dotted key, e.g. pretrain.epochs")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({problem}); quote it, e.g. {key}='\"...\"'") from None


def check_modality(cfg: PipelineConfig, root: str | Path) -> None:
    """The method trains on the modality of the data (``mlm`` on text, the others on images), and
    the labeled set is of the same modality; raises a ConfigError saying what to change."""
    from ssl_models.methods import TEXT_METHODS
    from tasks.core.layout import Layout

    def exists(source: str) -> bool:
        return source.startswith("torchvision:") or Path(Layout.at(root).source(source)).exists()

    data, method = cfg.data, cfg.pretrain.method
    if not exists(data.unlabeled):
        return  # the CLI says it is missing, naming the key
    modality = cfg.modality(root)
    text_method = method in TEXT_METHODS
    if modality == "text" and not text_method:
        raise ConfigError(
            f"data.unlabeled={data.unlabeled} is text, but pretrain.method={method} trains on images: set pretrain.method=mlm"
        )
    if modality == "image" and text_method:
        raise ConfigError(
            f"pretrain.method={method} trains on text, but data.unlabeled={data.unlabeled} is not a text source "
            "(a .txt, .jsonl, .csv or .csv.gz file, or a folder of .txt files)"
        )
    if exists(data.labeled) and cfg.modality(root, data.labeled) != modality:
        raise ConfigError(
            f"data.labeled={data.labeled} is not {modality} like data.unlabeled={data.unlabeled}: evaluate on labeled {modality}"
        )


def load_config(
    path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = (), missing_ok: bool = True
) -> PipelineConfig:
    """Read ``path``, apply ``overrides``, validate (the method against the data's modality too).

    A missing file means all defaults, unless ``missing_ok`` is False (a file the user
    named explicitly): then it is an error.
    """
    tree: dict[str, Any] = {}
    if path is not None and not Path(path).exists() and not missing_ok:
        raise ConfigError(f"{path}: no such parameter file")
    if path is not None and Path(path).exists():
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the parameter file: {err.strerror}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data:, pretrain:, ...), got {type(tree).__name__}")
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        cfg = PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{path or 'config'}: {_problems(err)}") from None
    # Relative data paths are relative to the project root, where params.yaml lives.
    root = Path(path).parent if path is not None else Path.cwd()
    check_modality(cfg, root)
    cfg._modality = cfg.modality(root)
    return cfg


def _problems(err: ValidationError) -> str:
    """One line per wrong key; a number-or-auto key reads "...: <the number's fault> (or 'auto')"."""
    problems = []
    for e in err.errors():
        loc = [str(part) for part in e["loc"]]
        if not loc:  # a check across sections: its message names the keys
            problems.append(e["msg"].removeprefix("Value error, "))
            continue
        if loc[-1] == "literal['auto']":
            continue  # the other half of a number-or-auto union: said once below
        message = e["msg"].removeprefix("Value error, ")
        if loc[-1] in ("constrained-float", "float"):
            loc, message = loc[:-1], f"{message} (or 'auto')"
        problems.append(f"{'.'.join(loc)}: {message}")
    return "; ".join(problems)


def params_yaml() -> str:
    """``params.yaml`` as the defaults make it, each key commented with its description."""
    header = (
        "# Pipeline parameters, grouped by stage. Written by `sslpipe generate` from tasks/core/config.py\n"
        "# (edit your values freely; `sslpipe run --set pretrain.epochs=5` overrides one for a run).\n"
        "# DVC reruns exactly the stages whose params changed."
    )
    lines = [header]
    defaults = PipelineConfig()
    for name, field in PipelineConfig.model_fields.items():
        section_name = field.alias or name
        section = getattr(defaults, name)
        lines.append(f"\n{section_name}:")
        for key, sub in type(section).model_fields.items():
            value = yaml.safe_dump(section.model_dump(mode="json")[key], default_flow_style=True, width=1000).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            comment = f"  # {sub.description}" if sub.description else ""
            lines.append(f"  {key}: {value}{comment}")
    return "\n".join(lines) + "\n"
