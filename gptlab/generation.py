"""Text from a model and its tokenizer: a prompt's continuations sampled as one batch, decoded
as they come (the model's own generation, GPT.stream, works in tokens). gptlab.sample streams
them to the console and a file."""

import time
from collections.abc import Callable

import torch

from gptlab.data.tokenizer import Tokenizer
from gptlab.model import LanguageModel


def generate_samples(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    use_cache: bool,
    write: Callable[[str], None],
) -> float:
    """Samples num_samples continuations of prompt as one batch, and writes them: one sample
    streams as it is sampled; several are written when done, one after the other. Returns the
    seconds the sampling took."""
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)] * num_samples, dtype=torch.long, device=device)
    # one decoder a row: a character of several byte tokens comes out whole
    decoders = [tokenizer.stream() for _ in range(num_samples)]
    texts: list[list[str]] = [[prompt] for _ in range(num_samples)]
    if num_samples == 1:
        write(prompt)
    start = time.perf_counter()
    for tokens in model.stream(idx, max_new_tokens, temperature, top_k, use_cache):
        for row, token in enumerate(tokens[:, 0].tolist()):
            piece = decoders[row](token)
            if num_samples == 1:
                write(piece)
            else:
                texts[row].append(piece)
    seconds = time.perf_counter() - start
    if num_samples > 1:
        write("\n---------------\n".join("".join(text) for text in texts))
    write("\n")
    return seconds
