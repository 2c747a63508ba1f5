"""Prepare a corpus ahead of training: `python -m gptlab.prepare data.path=... [data/tokenizer=bpe]`.

Takes the training command's data settings, so `python -m gptlab.train` with the same ones finds
the corpus prepared (see gptlab/data/corpus.py): trains the tokenizer, encodes the text into the
token file with a progress bar, and reports what is where. Run it again after the text changes.
"""

import hydra
from omegaconf import DictConfig

from gptlab import cli
from gptlab.data.datamodule import TextDataModule


def prepare(cfg: DictConfig, progress: bool = True) -> TextDataModule:
    """The data module of the data settings, its corpus prepared (or found prepared) and both
    splits checked to be long enough for block_size."""
    datamodule: TextDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.progress = progress
    datamodule.setup("fit")
    return datamodule


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with cli.errors_in_one_line():
        datamodule = prepare(cfg)
    corpus = datamodule.corpus
    manifest = corpus.manifest
    tokenizer_s, encoding_s = manifest["seconds"]["tokenizer"], manifest["seconds"]["encoding"]
    how = (
        f"prepared in {tokenizer_s + encoding_s:.1f} s "
        f"(tokenizer {tokenizer_s:.1f} s, encoding {encoding_s:.1f} s)"
        if corpus.prepared_now
        else "already prepared, current"
    )
    size = sum(s["size"] for s in manifest["sources"])
    print(f"{corpus.directory}: {how}")
    print(f"  text      {len(manifest['sources'])} file(s), {size / 1e6:,.1f} MB")
    print(f"  tokenizer {manifest['tokenizer']['type']}, vocab_size {datamodule.tokenizer.vocab_size:,}")
    print(
        f"  tokens    {manifest['tokens']:,} ({manifest['dtype']}): {manifest['train_tokens']:,} training, "
        f"{manifest['tokens'] - manifest['train_tokens']:,} validation"
    )


if __name__ == "__main__":
    main()
