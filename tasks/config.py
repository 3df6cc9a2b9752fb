"""One typed config for the whole pipeline, loaded from ``params.yaml``.

Sections mirror the stages. Unknown keys are errors, so a typo in ``params.yaml`` or
``--set`` fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    unlabeled: str = Field("data/sample/unlabeled.tar.gz", description="unlabeled images: folder, tar archive, or torchvision:NAME")
    labeled: str = Field("data/sample/labeled.tar.gz", description="labeled evaluation images: train/<class>/ and test/<class>/ (or <class>/ only)")
    image_size: int = Field(32, ge=8, description="side length images are resized to")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="test share when the labeled set has no train/test split")


class ValidateConfig(Section):
    min_images: int = Field(16, ge=1)
    min_side: int = Field(8, ge=1, description="smallest allowed width or height in pixels")
    max_side: int = Field(4096, ge=1, description="largest allowed width or height in pixels")
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP", "BMP"]
    allow_duplicates: bool = False


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
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.3, gt=0, description="learning rate for batch 256, scaled linearly")
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N")
    seed: int = 0


class EvaluateConfig(Section):
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    probe_weight_decays: list[float] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    probe_validation_fraction: float = Field(0.2, gt=0, lt=1)


class RegisterConfig(Section):
    model_name: str = "ssl-encoder"
    alias: str = "challenger"
    experiment: str = "ssl-pipeline"


class PipelineConfig(Section):
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    augment: AugmentConfig = AugmentConfig()
    pretrain: PretrainConfig = PretrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")

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
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read ``path`` (missing file = all defaults), apply ``overrides``, validate."""
    tree: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path or 'config'}: {problems}") from None
