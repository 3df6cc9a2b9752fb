"""``sslpipe export``: a registered encoder as ONNX or a ``torch.export`` program, checked and logged.

    sslpipe export --format onnx                        models:/ssl-encoder@champion -> models/export/ssl-encoder-v3.onnx
    sslpipe export --format torch_export --model models:/ssl-text-encoder/2 --out /tmp/serving

The encoder is rebuilt from the version's plain files (weights only, no pickle), exported
(ssl_models/export.py: dynamic batch axis), and checked at once against the torch encoder on a
real batch, the version's input example (two evaluation images, or a few documents tokenized
by the model's own tokenizer): the largest absolute difference is printed, above 1e-4 the
export fails. The file is then logged to the version's run, under ``export/``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssl_models.encoder import CONFIG_FILE, load_encoder
from ssl_models.export import OPSET, check_onnx, check_program, export_onnx, export_program
from ssl_models.text import TOKENIZER_FILE, clean_text, is_text_encoder_config, load_text_encoder
from tasks.registry.models import weights_dir

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}


@dataclass(frozen=True)
class Exported:
    path: Path
    format: str
    model_name: str
    version: str
    run_id: str
    max_abs_diff: float
    batch: int  # rows of the real batch it was checked on

    def summary(self) -> str:
        what = f"ONNX opset {OPSET}" if self.format == "onnx" else "torch.export program"
        runtime = "onnxruntime" if self.format == "onnx" else "the exported program"
        return (
            f"{self.model_name} version {self.version} -> {self.path} ({what}, any batch size)\n"
            f"{runtime} vs the torch encoder on {self.batch} real inputs (and on 1): max abs diff {self.max_abs_diff:.2e}\n"
            f"logged to MLflow run {self.run_id} as export/{self.path.name}"
        )


def real_batch(model_dir: Path, folder: Path, config: dict) -> torch.Tensor:
    """The version's input example as the encoder takes it: float images, or token ids."""
    from mlflow.models import Model

    example = Model.load(model_dir).load_input_example(str(model_dir))
    if not is_text_encoder_config(config):
        return torch.as_tensor(example, dtype=torch.float32)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    encoded = tokenizer.encode_batch([clean_text(str(text)) for text in example["text"]])
    return torch.tensor([e.ids for e in encoded], dtype=torch.long)


def load_module(folder: Path, config: dict) -> nn.Module:
    return load_text_encoder(folder) if is_text_encoder_config(config) else load_encoder(folder)


def export_registered(uri: str, fmt: str, out: Path) -> Exported:
    """Export the model version ``uri`` names into ``out`` (the tracking store must be selected)."""
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose {', '.join(FORMATS)}")
    client = mlflow.MlflowClient()
    name, version = get_model_name_and_version(client, uri)
    run_id = client.get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory(prefix="sslpipe-export-") as tmp:
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        folder = weights_dir(model_dir)
        config = json.loads((folder / CONFIG_FILE).read_text())
        encoder, batch = load_module(folder, config), real_batch(model_dir, folder, config)
    path = Path(out) / f"{name}-v{version}{FORMATS[fmt]}"
    if fmt == "onnx":
        diff = check_onnx(export_onnx(encoder, batch, path), encoder, batch)
    else:
        diff = check_program(export_program(encoder, batch, path), encoder, batch)
    client.log_artifact(run_id, str(path), "export")
    return Exported(path, fmt, name, str(version), run_id, diff, len(batch))
