"""One typed config for the whole pipeline, loaded from ``params.yaml``.

Sections mirror the stages. Unknown keys are errors, so a typo in ``params.yaml`` or
``--set`` fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    unlabeled: str = Field("data/sample/unlabeled.tar.gz", description="unlabeled images: folder, tar archive, or torchvision:NAME")
    labeled: str = Field("data/sample/labeled.tar.gz", description="labeled evaluation images: train/<class>/ and test/<class>/ (or <class>/ only)")
    image_size: int = Field(32, ge=8, description="side length images are resized to")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="test share when the labeled set has no train/test split")


Conversion = Literal["grayscale", "alpha", "palette", "cmyk", "high_bit_depth", "resize"]


class ValidateConfig(Section):
    min_images: int = Field(16, ge=1, description="fewest images (after quarantine) worth training on")
    min_side: int = Field(8, ge=1, description="smallest allowed width or height in pixels")
    max_side: int = Field(4096, ge=1, description="largest allowed width or height in pixels")
    allowed_formats: list[str] = Field(["JPEG", "PNG", "WEBP", "BMP"], description="formats as read from the content, not the extension")
    allow_duplicates: bool = False
    on_fail: Literal["stop", "quarantine"] = Field("stop", description="stop: no training on a dump with any bad file; quarantine: leave bad files out")
    max_bad_fraction: float = Field(0.05, ge=0, le=1, description="quarantine: train only if at most this share of the files is bad")
    convert: list[Conversion] = Field(
        ["grayscale", "alpha", "palette", "cmyk", "high_bit_depth", "resize"],
        description="cases converted to RGB at the training size instead of failing",
    )
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb guard: larger images are a fault and never decoded")
    blank_std: float = Field(0.01, ge=0, description="an image whose every channel has a std (0..1 scale) at or below this is blank")
    drift_tolerance: float | None = Field(
        0.1, gt=0, description="dataset mean/std per channel must stay within this of the last validated version's; null: no drift check"
    )
    workers: int = Field(0, ge=0, description="processes that read images; 0: one per CPU core, used only when the work is long enough to pay")


class AugmentConfig(Section):
    crop_scale_min: float = Field(0.2, gt=0, le=1)
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.4, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.0, ge=0, le=1)
    preview_images: int = Field(8, ge=1, le=64)


class PretrainConfig(Section):
    method: str = "simclr"
    method_params: dict[str, Any] = Field(default_factory=dict, description="overrides of the method's own defaults")
    backbone: str = Field("auto", description="backbone name, or auto for the method's preferred one")
    width: int = Field(16, ge=4, description="ResNet base width: 16 on a CPU, 64 on a GPU")
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(256, ge=2)
    # "auto": the method's recommended value (e.g. AdamW for MAE), else the SGD recipe.
    optimizer: Literal["auto", "sgd", "adamw"] = "auto"
    lr: float | Literal["auto"] = Field("auto", description="learning rate for batch 256, scaled linearly")
    weight_decay: float | Literal["auto"] = "auto"
    warmup_epochs: int = Field(1, ge=0)
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N")
    seed: int = 0


class EvaluateConfig(Section):
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    probe_weight_decays: list[float] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    probe_validation_fraction: float = Field(0.2, gt=0, lt=1)
    label_fractions: list[float] = Field(
        [0.01, 0.1, 1.0], description="shares of the labeled train split for the label-efficiency curve (fine-tuning recipe: the finetune section)"
    )
    embedding_points: int = Field(1000, ge=10, description="test images (at most) in the t-SNE picture of the embeddings")

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in value):
            raise ValueError(f"every label fraction must be in (0, 1], got {value}")
        # 100% is always on the curve: from scratch there is the supervised reference.
        return sorted(set(value) | {1.0})


class RegisterConfig(Section):
    model_name: str = "ssl-encoder"
    alias: str = "challenger"
    experiment: str = "ssl-pipeline"
    champion_alias: str = "champion"
    min_improvement: float = Field(0.0, ge=0, description="probe accuracy a challenger must gain over the champion to replace it")


class FinetuneConfig(Section):
    """The supervised recipe (used by evaluate's label-efficiency curve too) and the finetune flow."""

    data: str = Field("data/sample/labeled.tar.gz", description="labeled images for `sslpipe finetune`: <class>/ folders, or train/ + test/")
    encoder_alias: str = Field("champion", description="which version of register.model_name to fine-tune")
    label_fraction: float = Field(1.0, gt=0, le=1, description="share of the train labels the registered classifier learns from")
    compare_fraction: float | None = Field(0.1, gt=0, le=1, description="also fine-tune and train from scratch on this share, to compare; null: skip")
    steps: int = Field(150, ge=1, description="optimisation steps, the same at every label fraction (sized for 2 CPU cores)")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.05, gt=0, description="SGD (Nesterov) peak learning rate, cosine decay")
    weight_decay: float = Field(5e-4, ge=0)
    warmup_steps: int = Field(10, ge=0)
    crop_scale_min: float = Field(0.5, gt=0, le=1, description="random resized crop scale range [crop_scale_min, 1]")
    flip_p: float = Field(0.5, ge=0, le=1)
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N")
    seed: int = 0
    model_name: str = "ssl-classifier"
    experiment: str = "ssl-finetune"


class PipelineConfig(Section):
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    augment: AugmentConfig = AugmentConfig()
    pretrain: PretrainConfig = PretrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    finetune: FinetuneConfig = FinetuneConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # "validate" and "register" are names pydantic's BaseModel already uses, so those
    # sections are stored as validate_ / register_ and read through these properties.
    @property
    def validate(self) -> ValidateConfig:  # type: ignore[override]
        return self.validate_

    @property
    def register(self) -> RegisterConfig:  # type: ignore[override]
        return self.register_

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

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


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = (), missing_ok: bool = True) -> PipelineConfig:
    """Read ``path``, apply ``overrides``, validate.

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
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path or 'config'}: {problems}") from None
