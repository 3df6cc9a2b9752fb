"""Calibrate ``select.duplicate_threshold`` on planted near-copies, with a pipeline's own encoder.

    python benchmarks/calibrate_duplicates.py --root PROJECT [--originals 300]

In a project where the pipeline ran (``models/encoder``, ``data/prepared/unlabeled``), the first
``--originals`` pooled images get four near-copies each, made as the issue describes: re-encoded
as JPEG at quality 70, cropped by 1 and by 2 px and resized back, brightness x1.15 (different
bytes each). The pool plus the copies are embedded the embed stage's way (centred on the pool
mean, l2-normalised). Reported: the similarity of each copy to its original (the pairs a
threshold must keep) against each original's most similar *other* pool image (the pairs it
must not flag), as percentiles, and the share of copies and of distinct-image pairs at or above
each candidate threshold. Results: benchmarks/results/duplicate-threshold.json.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_result


def copies(pixels: np.ndarray) -> dict[str, np.ndarray]:
    image = Image.fromarray(pixels)
    w, h = image.size
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)

    def crop(px: int) -> Image.Image:
        return image.crop((px, px, w - px, h - px)).resize((w, h), Image.Resampling.BICUBIC)

    made = {
        "jpeg_q70": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
        "crop_1px": crop(1),
        "crop_2px": crop(2),
        "brightness_1.15": ImageEnhance.Brightness(image).enhance(1.15),
    }
    return {name: np.asarray(copy, dtype=np.uint8) for name, copy in made.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--originals", type=int, default=300)
    args = parser.parse_args()
    from ssl_models.encoder import load_encoder
    from ssl_models.evaluation import extract_features
    from tasks.image.shards import ShardReader

    encoder = load_encoder(args.root / "models" / "encoder")
    reader = ShardReader(args.root / "data" / "prepared" / "unlabeled")
    pool = extract_features(encoder, reader)
    originals = reader.read(np.arange(args.originals)).permute(0, 2, 3, 1).numpy()
    kinds = list(copies(originals[0]))
    planted = np.stack([copies(image)[kind] for image in originals for kind in kinds])
    copy_features = extract_features(encoder, torch.from_numpy(planted).permute(0, 3, 1, 2).contiguous())
    mean = pool.mean(0)
    unit = torch.nn.functional.normalize(pool - mean, dim=1)
    copy_unit = torch.nn.functional.normalize(copy_features - mean, dim=1)
    owner = torch.arange(args.originals).repeat_interleave(len(kinds))
    to_original = (copy_unit * unit[owner]).sum(1)  # (originals x kinds,)
    sims = unit[: args.originals] @ unit.T
    sims[torch.arange(args.originals), torch.arange(args.originals)] = -2
    nearest_other = sims.max(1).values  # each original's most similar other pool image
    all_other = (unit @ unit.T).triu(1)
    pairs = all_other[all_other != 0]

    def pct(x: torch.Tensor) -> dict:
        return {str(q): round(float(torch.quantile(x, q / 100)), 4) for q in (0, 1, 5, 50, 95, 99, 100)}

    thresholds = [0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
    result = {
        "root": str(args.root),
        "pool": len(pool),
        "originals": args.originals,
        "copy_to_original_percentiles": pct(to_original),
        "copy_to_original_by_kind_min": {k: round(float(to_original[i :: len(kinds)].min()), 4) for i, k in enumerate(kinds)},
        "nearest_other_percentiles": pct(nearest_other),
        "at_threshold": {
            str(t): {
                "copies_found": round(float((to_original >= t).float().mean()), 4),
                "copies_found_by_kind": {
                    k: round(float((to_original[i :: len(kinds)] >= t).float().mean()), 3) for i, k in enumerate(kinds)
                },
                "distinct_pairs_flagged": int((pairs >= t).sum()),
                "distinct_pairs": len(pairs),
            }
            for t in thresholds
        },
    }
    print(result)
    print(save_result("duplicate-threshold", result))


if __name__ == "__main__":
    main()
