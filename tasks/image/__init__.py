"""The image modality: sources, reading one file safely, the per-image table, shards of decoded pixels, and its part of each stage."""
