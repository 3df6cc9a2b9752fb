"""Which memory layout to train a model in.

``channels_last`` is what tensor cores want on a GPU, so CUDA training uses it. On the CPU
it is about 20% faster (see the field notes), but oneDNN's channels_last convolution
backward corrupts memory or hangs with torch 2.14.1 ("free(): invalid next size", "double
free or corruption", a spin forever in libgomp): seen with 4 channels at 32 px and 8
channels at 224 px, on a CPU with AVX-512, and the suite aborted in CI twice. A crash that
loses a run costs more than 20%, so CPU training keeps the default layout.
"""

from __future__ import annotations

import torch
from torch import nn


def training_memory_format(model: nn.Module, device: torch.device, wanted: bool = True) -> torch.memory_format:
    has_convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    use = wanted and has_convs and torch.device(device).type == "cuda"
    return torch.channels_last if use else torch.contiguous_format
