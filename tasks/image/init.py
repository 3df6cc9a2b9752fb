"""``pretrain.init``: pretraining starts from given weights instead of a random initialisation.

    pretrain.init: models/encoder/weights.pt            a local state_dict: .pt/.pth/.bin (torch.load,
                                                        weights_only=True) or .safetensors; relative to the root
    pretrain.init: timm:resnet18                        timm's pretrained weights (downloaded once, when online)
    pretrain.init: torchvision:resnet18                 torchvision's DEFAULT weights (likewise)
    pretrain.init: models:/ssl-encoder@champion         a registered encoder: continue from it on new data

Every source becomes a local state_dict file (:func:`resolve_init`; downloads are written to
``.sslpipe/init/`` as safetensors), whose sha256 the run records as a lineage tag beside the
value as given (a param). The weights are loaded into the encoder before training
(``ssl_models.encoder.load_init_weights``: the encoder's own keys, its backbone's, or those of
the torchvision / timm model inside it); a missing tensor or another shape fails before
anything trains, with one line naming the keys. Offline, ``timm:`` and ``torchvision:`` fail
with one line saying to pass a downloaded file instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_models.backbones import TIMM_PREFIX, TimmBackbone
from ssl_models.encoder import WEIGHTS_FILE, InitWeightsError, load_init_weights
from tasks.core.layout import Layout
from tasks.core.results import file_sha256

TORCHVISION_PREFIX = "torchvision:"
MODELS_PREFIX = "models:/"
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class InitError(ValueError):
    """``pretrain.init`` names weights that cannot be had or do not fit; one line says which and why."""


@dataclass(frozen=True)
class InitWeights:
    source: str  # pretrain.init as given
    path: Path  # a local state_dict file
    sha256: str  # of that file: the lineage tag init_sha256


def resolve_init(source: str, layout: Layout, image_size: int) -> InitWeights:
    """A local state_dict file for ``source`` (see the module docstring), downloading if needed."""
    if source.startswith(MODELS_PREFIX):
        path = _registered(source, layout)
    elif source.startswith((TIMM_PREFIX, TORCHVISION_PREFIX)):
        path = _hub(source, layout, image_size)
    else:
        path = Path(layout.source(source))
        if not path.is_file():
            raise InitError(f"pretrain.init={source}: no such file ({path})")
        if path.suffix not in STATE_SUFFIXES:
            raise InitError(f"pretrain.init={source}: expected a state_dict file ({', '.join(STATE_SUFFIXES)})")
    return InitWeights(source, path, file_sha256(path))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict file's tensors, without pickle."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickled objects, a corrupt file: one line, not a traceback
        raise InitError(f"pretrain.init: {path} is not a weights-only state_dict: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitError(f"pretrain.init: {path} holds no state_dict (a dict of tensor names to tensors)")
    return state


def apply_init(encoder: torch.nn.Module, init: InitWeights) -> list[str]:
    """Load ``init`` into ``encoder``; the given keys it has no place for (left out)."""
    try:
        return load_init_weights(encoder, read_state_dict(init.path))
    except InitWeightsError as err:
        raise InitError(f"pretrain.init={init.source} does not fit the encoder: {err}") from None


def _registered(uri: str, layout: Layout) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.registry.tracking import weights_dir

    target = layout.state / "init" / uri.removeprefix(MODELS_PREFIX).replace("/", "-").replace("@", "-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
    except MlflowException as err:
        raise InitError(f"pretrain.init={uri}: {err.message}") from None
    return weights_dir(local) / WEIGHTS_FILE


def _hub(source: str, layout: Layout, image_size: int) -> Path:
    """timm's or torchvision's pretrained weights as a safetensors file under .sslpipe/init/ (kept:
    a second run, or one offline after the first, reads it)."""
    kind, name = source.split(":", 1)
    target = layout.state / "init" / f"{kind}-{name}-{image_size}px.safetensors"
    if target.exists():
        return target
    try:
        if kind == "timm":
            state = TimmBackbone(name, image_size, pretrained=True).net.state_dict()
        else:
            import torchvision

            state = torchvision.models.get_model(name, weights="DEFAULT").state_dict()
    except ValueError as err:  # an unknown name
        raise InitError(f"pretrain.init={source}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # noqa: BLE001 - no network (URLError, the hub's offline errors): one line with the way out
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        raise InitError(
            f"pretrain.init={source}: could not download its pretrained weights ({reason}); offline? Download them "
            "where there is internet and pass the file: pretrain.init=/path/to/weights.safetensors (or .pt)"
        ) from None
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".staging-{target.name}")
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(staging))
    staging.replace(target)
    return target
