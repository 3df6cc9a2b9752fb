"""Which memory layout to train a model in.

``channels_last`` makes CPU convolutions about 20% faster (see the field notes) and is what
tensor cores want on a GPU. One exception: oneDNN's AVX2 kernels (CPUs without AVX-512)
corrupt memory or hang in the weight gradient of a narrow convolution (seen with torch
2.14.1: "free(): invalid next size", "double free or corruption" or a spin forever in
libgomp) with 4 channels at 32 px and with 8 channels at 224 px; 12 and 16 were fine. Models
with a convolution narrower than 16 channels (test-sized ones) train in the default layout.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_CHANNELS = 16


def training_memory_format(model: nn.Module, wanted: bool = True) -> torch.memory_format:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    narrow = any(min(m.in_channels, m.out_channels) < MIN_CHANNELS for m in convs if m.in_channels > 3)
    return torch.channels_last if wanted and convs and not narrow else torch.contiguous_format
