"""Pipelines: `bot train` and `bot tune`, training jobs from the server, drafts of training data."""
