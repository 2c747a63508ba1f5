"""Text in, batches out. tokenizer: char and byte-level BPE, kept as plain data in checkpoints.
corpus: text files prepared once into a memory-mapped token file with its manifest. datamodule:
the Lightning data module that draws training windows and scores the validation span.

The model never imports this package: it knows vocab_size only."""
