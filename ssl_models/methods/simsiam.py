"""SimSiam: a Siamese network with a predictor and a stop-gradient, nothing else.

Chen, He. "Exploring Simple Siamese Representation Learning", CVPR 2021.
https://arxiv.org/abs/2011.10566

    images --views--> x_a, x_b --encoder + projector--> z_a, z_b --predictor--> p_a, p_b
    loss = D(p_a, stopgrad(z_b)) / 2 + D(p_b, stopgrad(z_a)) / 2,   D = -cosine   in [-1, 1]

No negatives, no momentum encoder. The paper shows the stop-gradient is what prevents
collapse (without it the loss drops to -1 at once and the outputs collapse). The
projector ends with BN (SimSiam's CIFAR variant has 2 layers); the predictor is a
bottleneck MLP (hidden = output / 4).

The predictor learns 10x faster than the rest (``predictor_lr_scale``). The paper
already treats the predictor apart (a constant lr, not the cosine); Tian, Chen and
Ganguli (ICML 2021, arXiv:2102.06810) show why it matters: the predictor's lr relative
to the encoder's sets how easily training falls into collapse and whether the predictor
aligns with the features' correlations. Measured on the bundled sample (width-8 ResNet,
batch 64, lr 0.3 per 256, 10 epochs of 5,000 images; random init kNN 0.237-0.264 /
probe 0.263-0.298 over 5 seeds; benchmarks/results/simsiam_seeds.jsonl):
    predictor at the base lr   kNN 0.260-0.306, probe 0.268-0.348 (5 seeds); on some
                               seeds the effective rank fell to 7 in epoch 2 and stayed
                               near 10, and kNN and probe stayed at random-init level
                               even at 20 epochs (kNN 0.247 / probe 0.281)
    predictor at 10x the lr    kNN 0.288-0.335, probe 0.312-0.349 (4 seeds); rank
                               24-35 in epoch 2 (base lr: 7-16), 41-45 at the end
    predictor at 3x the lr     kNN 0.300-0.335, probe 0.323-0.364 (4 seeds)
At 40 epochs the base-lr predictor catches up (kNN 0.372 / probe 0.406). A constant
predictor lr, the output BN's affine part off (both as the paper's code), a lower lr
(0.03-0.15) or a 3-layer 512-wide projector did not beat the plain recipe at 10 or 40
epochs. Heads: 512-wide ones collapsed partly on short runs (embedding std 0.024-0.028
of a healthy 0.044); 128 with a bottleneck of 32 keeps it healthy.

Backbones: any CNN or ViT encoder (defaults to the CIFAR ResNet-18).
Kept after training: ``encoder`` (projector and predictor are dropped).
Optimiser: the pipeline default (SGD, lr 0.3 per 256, cosine); the paper's CIFAR lr,
0.03 per 256 for 800 epochs, barely moves in a few epochs. Watch the collapse monitor
on long runs: SimSiam has no term that forbids collapse.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.augment import ViewPolicy
from ssl_models.encoder import Encoder
from ssl_models.heads import PredictionHead, ProjectionHead
from ssl_models.losses.neg_cosine import negative_cosine_similarity
from ssl_models.methods.base import StepOutput


class SimSiam(nn.Module):
    backbones = ("resnet18_cifar", "vit_tiny")
    # Several processes: BN statistics of the global batch, as the paper's SyncBN.
    sync_batchnorm = True

    def __init__(
        self,
        encoder: Encoder,
        views: ViewPolicy,
        projection_dim: int = 128,
        predictor_hidden_dim: int = 32,
        predictor_lr_scale: float = 10.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = views
        self.projector = ProjectionHead(encoder.feature_dim, projection_dim, projection_dim, num_layers=2, last_batch_norm=True)
        self.predictor = PredictionHead(projection_dim, predictor_hidden_dim, projection_dim)
        self.lr_scales = {"predictor": predictor_lr_scale}  # read by the training loop's optimiser

    def training_step(self, images: torch.Tensor) -> StepOutput:
        # images: (B, 3, H, W) in [0, 1]
        x_a, x_b = self.views(images), self.views(images)  # (B, 3, S, S) each
        # One pass per view, as the paper's code: BatchNorm then standardises each view's
        # batch on its own, which is part of what keeps the outputs from collapsing.
        z_a, z_b = self.projector(self.encoder(x_a)), self.projector(self.encoder(x_b))  # (B, D)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)  # (B, D)
        # The stop-gradient: z is a fixed target for the other view's prediction.
        loss = negative_cosine_similarity(p_a, z_b.detach()) / 2 + negative_cosine_similarity(p_b, z_a.detach()) / 2
        return StepOutput(loss, z_a.detach())
