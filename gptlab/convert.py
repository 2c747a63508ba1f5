"""Convert checkpoints between gptlab and Hugging Face transformers (GPT-2's layout) or nanoGPT
(karpathy/nanoGPT, character-level models).

    python -m gptlab.convert to_hf outputs/DATE/TIME hf-model/
    python -m gptlab.convert from_hf hf-model/ imported.ckpt
    python -m gptlab.convert from_nanogpt out/ckpt.pt data/shakespeare_char/meta.pkl nano.ckpt
    python -m gptlab.convert to_nanogpt outputs/DATE/TIME out-gptlab/ckpt.pt out-gptlab/meta.pkl

A converted checkpoint samples with gptlab.sample and fine-tunes with init_from=. An exported
directory loads with transformers' AutoModelForCausalLM and AutoTokenizer (gptlab/interop/
huggingface.py). Going to nanoGPT needs a standard GPT with lm_head tied to the token embedding
(model.tie_weights=true).
"""

import argparse
import json
import pickle
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptlab import cli
from gptlab.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from gptlab.interop import huggingface
from gptlab.interop.nanogpt import from_nanogpt, to_nanogpt
from gptlab.runs import run_directory


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gptlab.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_hf = commands.add_parser("to_hf", help="a gptlab checkpoint -> a transformers GPT-2 directory")
    to_hf.add_argument("ckpt", type=Path, help="a gptlab checkpoint, or a run directory (its best)")
    to_hf.add_argument("out", type=Path, help="the directory to write (config, weights, tokenizer, card)")
    from_hf = commands.add_parser("from_hf", help="a transformers GPT-2 directory -> a gptlab checkpoint")
    from_hf.add_argument(
        "hf_dir", type=Path, help="a directory saved with save_pretrained, with its tokenizer"
    )
    from_hf.add_argument("out", type=Path, help="the gptlab checkpoint to write")
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
        if args.command == "to_hf":
            export_to_hf(args.ckpt, args.out)
        elif args.command == "from_hf":
            if not args.hf_dir.is_dir():
                raise FileNotFoundError(f"{args.hf_dir} is not a directory")
            checkpoint = huggingface.import_model(args.hf_dir)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, args.out)
            print(f"wrote {args.out}")
        elif args.command == "from_nanogpt":
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


def export_to_hf(ckpt: Path, out: Path) -> None:
    """A checkpoint (or a run directory's best) as a transformers directory, with a model card
    from its run's records when it has them."""
    checkpoint_file = find_checkpoint(ckpt)
    checkpoint = load_checkpoint(checkpoint_file)
    model, tokenizer = model_from_checkpoint(checkpoint)
    huggingface.architecture(model.config)  # refused before anything is written
    huggingface.transformers_module()
    run_dir = run_directory.run_dir_of(checkpoint_file)
    summary: dict = {}
    if run_dir is not None:
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        if (run_dir / ".hydra" / "config.yaml").is_file():
            summary["data"] = OmegaConf.load(run_dir / ".hydra" / "config.yaml").data.path
    card = huggingface.model_card(model.config, tokenizer, summary, checkpoint.get("global_step", 0))
    huggingface.export(model, tokenizer, out, card)
    print(f"wrote {out}: load it with transformers' AutoModelForCausalLM and AutoTokenizer")


if __name__ == "__main__":
    main()
