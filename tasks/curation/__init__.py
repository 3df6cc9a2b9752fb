"""Putting the registered encoder to work on the unlabeled pool (the embed stage, `sslpipe select`,
`sslpipe similar`): the embeddings index (index.py), near-duplicates, outliers and the shortlist
(pool.py), and their pictures (pictures.py). The selection algorithms themselves are pure
PyTorch in ssl_models/selection.py.
"""
