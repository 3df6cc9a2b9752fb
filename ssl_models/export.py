"""Encoders exported for serving stacks outside PyTorch: ONNX, or a ``torch.export`` program.

    export_onnx(encoder, example, "encoder.onnx")        any batch size (a dynamic batch axis)
    max_abs_diff = check_onnx("encoder.onnx", encoder, batch)   onnxruntime against the module

**Exporter.** ``torch.onnx.export(..., dynamo=True)``: torch's default since 2.9 and the one it
develops; the classic TorchScript-based exporter (``dynamo=False``) is deprecated with TorchScript.
Both exported every encoder here on torch 2.14.1 (the CIFAR ResNet, the ViT, timm's resnet18
and vit_tiny at 32 px, the text Transformer) to within 3e-6 of the module under onnxruntime
1.32; dynamo's graph is exported through ``torch.export``, so it is the same graph as the
``.pt2`` program of :func:`ssl_models.encoder.export_program`. Opset 18, the dynamo exporter's
own (the lowest it writes); onnxruntime 1.17+ runs it. One file: the weights inside
(``external_data=False``; fine below ONNX's 2 GB limit).

**Inputs.** An image encoder takes float32 ``images`` (B, 3, H, W) in [0, 1] at the size it
was trained at (it normalises them itself), a text encoder int64 ``token_ids`` (B, L), 0 =
[PAD], L up to its ``max_len`` (both axes dynamic); output ``features`` (B, feature_dim).
The text encoder is exported without :func:`ssl_models.text.trim_padding`, whose
data-dependent length a graph cannot hold; the padding is masked, so the features are the same.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 18
TOLERANCE = 1e-4  # max abs difference onnxruntime vs torch accepted at export time


class ExportMismatch(RuntimeError):
    """The exported model's outputs differ from the module's by more than TOLERANCE."""


class _TextFeatures(nn.Module):
    """A text encoder's features without trimming the padding (see the module docstring)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(token_ids, trim=False)


def is_text(encoder: nn.Module) -> bool:
    return encoder.config.get("modality") == "text"


def input_name(encoder: nn.Module) -> str:
    return "token_ids" if is_text(encoder) else "images"


def _traceable(encoder: nn.Module) -> tuple[nn.Module, dict[int, torch.export.Dim]]:
    """The module to export and its input's dynamic axes: the batch, and a text encoder's length."""
    encoder = encoder.eval()
    dims = {0: torch.export.Dim("batch", min=1)}
    if not is_text(encoder):
        return encoder, dims
    dims[1] = torch.export.Dim("length", min=1, max=encoder.max_len)
    return _TextFeatures(encoder).eval(), dims


def _two_rows(example: torch.Tensor) -> torch.Tensor:
    """torch.export specialises an axis of size 1 to a constant: export with at least 2 rows."""
    return example if len(example) >= 2 else torch.cat([example, example])


def export_onnx(encoder: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write ``encoder`` as an ONNX file with a dynamic batch axis (text: also the length).
    ``example``: a real batch of what it takes."""
    module, dims = _traceable(encoder)
    example = _two_rows(example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter prints its progress ("[torch.onnx] Obtain model graph ...") and its optimiser
    # logs every pass at INFO: both kept out of the terminal.
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name(encoder)],
            output_names=["features"],
            dynamic_shapes=(dims,),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    return path


def export_program(encoder: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Save ``encoder`` as a ``torch.export`` program (``.pt2``): graph and weights, loadable with
    ``torch.export.load(path).module()`` without this package; the same dynamic axes as ONNX."""
    module, dims = _traceable(encoder)
    with torch.no_grad():
        program = torch.export.export(module, (_two_rows(example),), dynamic_shapes=(dims,))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def onnx_features(path: str | Path, inputs: torch.Tensor) -> np.ndarray:
    """Run an exported encoder in onnxruntime (CPU): inputs (B, ...) -> features (B, D)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]


def max_abs_diff(reference: torch.Tensor | np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(actual, dtype=np.float64)).max())


def _check(run, what: str, path: str | Path, encoder: nn.Module, batch: torch.Tensor, tolerance: float) -> float:
    """The largest |exported - torch| over ``batch`` and over its first row alone (a second
    batch size: the batch axis is dynamic); raises ExportMismatch above ``tolerance``."""
    encoder = encoder.eval()
    worst = 0.0
    for inputs in (batch, batch[:1]):
        with torch.no_grad():
            worst = max(worst, max_abs_diff(encoder(inputs), run(inputs)))
    if not worst <= tolerance:  # NaN fails too
        raise ExportMismatch(f"{path}: {what} differs from the torch encoder by {worst:.2e} (> {tolerance:g})")
    return worst


def check_onnx(path: str | Path, encoder: nn.Module, batch: torch.Tensor, tolerance: float = TOLERANCE) -> float:
    """|onnxruntime - torch| at most, see :func:`_check`."""
    return _check(lambda inputs: onnx_features(path, inputs), "onnxruntime", path, encoder, batch, tolerance)


def check_program(path: str | Path, encoder: nn.Module, batch: torch.Tensor, tolerance: float = TOLERANCE) -> float:
    """|exported program - torch| at most, see :func:`_check`."""
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        return _check(lambda inputs: program(inputs).numpy(), "the exported program", path, encoder, batch, tolerance)
