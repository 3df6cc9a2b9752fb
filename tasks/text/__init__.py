"""The text modality: sources of documents, checks, the tokenizer and token shards, and its part of each stage."""
