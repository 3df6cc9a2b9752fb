"""The science of the pipeline, in plain PyTorch.

Backbones, heads, losses, batched augmentations, one file per SSL method, the
training loop and the evaluation maths. Nothing here imports Prefect, MLflow,
DVC or Great Expectations, so every piece is importable and testable alone.
"""
