"""The evaluation protocol given features: linear probe, kNN, label efficiency."""
