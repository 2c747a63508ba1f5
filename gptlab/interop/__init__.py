"""Checkpoints to and from other codebases: nanoGPT (character-level)."""
