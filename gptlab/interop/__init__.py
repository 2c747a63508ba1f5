"""Checkpoints to and from other codebases: nanoGPT (character-level) and Hugging Face
transformers (GPT-2, GPT-NeoX, Llama and Qwen3 layouts)."""
