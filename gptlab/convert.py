"""Convert checkpoints between gptlab and nanoGPT (karpathy/nanoGPT), character-level models.

    python -m gptlab.convert from_nanogpt out/ckpt.pt data/shakespeare_char/meta.pkl nano.ckpt
    python -m gptlab.convert to_nanogpt outputs/DATE/TIME out-gptlab/ckpt.pt out-gptlab/meta.pkl

A converted checkpoint samples with gptlab.sample and fine-tunes with init_from=. Going to
nanoGPT needs a standard GPT with lm_head tied to the token embedding (model.tie_weights=true).
"""

import argparse
import pickle
from pathlib import Path

import torch

from gptlab import cli
from gptlab.interop.nanogpt import from_nanogpt, to_nanogpt
from gptlab.training.checkpoint import find_checkpoint, load_checkpoint


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gptlab.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    source = commands.add_parser("from_nanogpt", help="nanoGPT's ckpt.pt + meta.pkl -> a gptlab checkpoint")
    source.add_argument("ckpt", type=Path, help="nanoGPT's ckpt.pt")
    source.add_argument("meta", type=Path, help="nanoGPT's meta.pkl (vocabulary of the character data)")
    source.add_argument("out", type=Path, help="the gptlab checkpoint to write")
    target = commands.add_parser("to_nanogpt", help="a gptlab checkpoint -> nanoGPT's ckpt.pt + meta.pkl")
    target.add_argument("ckpt", type=Path, help="a gptlab checkpoint, or a run directory (its best)")
    target.add_argument("out", type=Path, help="the ckpt.pt to write")
    target.add_argument("meta", type=Path, help="the meta.pkl to write")
    target.add_argument(
        "--dataset", default="shakespeare_char", help="recorded in ckpt.pt's config for nanoGPT's sample.py"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    with cli.errors_in_one_line():
        if args.command == "from_nanogpt":
            for path in (args.ckpt, args.meta):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} not found")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(from_nanogpt(args.ckpt, args.meta), args.out)
            print(f"wrote {args.out}")
        else:
            nano, meta = to_nanogpt(load_checkpoint(find_checkpoint(args.ckpt)), args.dataset)
            for path in (args.out, args.meta):
                path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(nano, args.out)
            with open(args.meta, "wb") as f:
                pickle.dump(meta, f)
            print(f"wrote {args.out} and {args.meta}")


if __name__ == "__main__":
    main()
