"""Converters from other formats to VQShape Hugging Face checkpoints."""
