"""Fine-tuning the response model: LoRA adapters on the base model, assistant-only loss."""
