"""Evaluation: fine-tuned against zero-, one- and few-shot prompting on held-out dialogues."""
