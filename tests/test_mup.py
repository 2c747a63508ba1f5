"""muP (model.parametrization=mup): the standard parametrization untouched, mup equal to it at its
base width, the multipliers of the muP paper's table at other widths, the coordinate check's
trend on real batches, a mup run through every entry point; and compute budgets (flops_budget)."""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from gptlab.bench.coord import coordinate_sizes
from gptlab.checkpoint import load_checkpoint, model_from_checkpoint
from gptlab.config import OptimConfig
from gptlab.data.datamodule import RandomWindows, TextDataModule
from gptlab.model import GPTConfig, create_model
from gptlab.training.optimizer import adamw
from tests.conftest import TINY, read_summary, run_here, train_here

SMALL = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=65)

# the losses of five AdamW steps of the seeded model below, measured with gptlab before muP was
# added (commit 76b24da): the standard parametrization must keep them
SP_LOSSES = {
    "sdpa": [4.175036, 3.903951, 3.680147, 3.429599, 3.243134],
    "manual": [4.175036, 3.903950, 3.680146, 3.429604, 3.243141],
    "heads": [4.176021, 3.880104, 3.736597, 3.453436, 3.253756],
}


def losses_of_five_steps(config: GPTConfig) -> tuple[list[float], torch.Tensor]:
    """The loss at each of five AdamW steps on one fixed batch, and the logits after them."""
    torch.manual_seed(0)
    model = create_model(config)
    tokens = torch.randint(
        config.vocab_size, (4, config.block_size + 1), generator=torch.Generator().manual_seed(1)
    )
    x, y = tokens[:, :-1], tokens[:, 1:]
    optimizer = adamw(model, OptimConfig(lr=1e-2))
    losses = []
    for _ in range(5):
        _, loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses, model(x)[0].detach()


@pytest.mark.parametrize("attention", ["sdpa", "manual", "heads"])
def test_the_standard_parametrization_trains_as_before(attention: str) -> None:
    losses, _ = losses_of_five_steps(GPTConfig(**SMALL, attention=attention))
    assert losses == pytest.approx(SP_LOSSES[attention], abs=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "manual", "heads"])
def test_mup_at_its_base_width_is_the_standard_parametrization_exactly(attention: str) -> None:
    sp = GPTConfig(**SMALL, attention=attention)
    mup = GPTConfig(**SMALL, attention=attention, parametrization="mup", base_width=SMALL["n_embd"])
    assert mup.attention_scale == sp.attention_scale
    sp_losses, sp_logits = losses_of_five_steps(sp)
    mup_losses, mup_logits = losses_of_five_steps(mup)
    assert mup_losses == sp_losses  # the same floats: init, scales and learning rates all equal
    assert torch.equal(mup_logits, sp_logits)


def test_mup_scales_init_learning_rates_logits_and_attention_with_the_width() -> None:
    m = 4  # n_embd 384 against a base width of 96
    torch.manual_seed(0)
    config = GPTConfig(**SMALL | {"n_embd": 384}, parametrization="mup", base_width=96)
    model = create_model(config)
    assert config.width_multiplier == m
    # attention: 1/head_size, times sqrt(base head_size) (96/4 = 24; 384/4 = 96 now)
    assert config.attention_scale == pytest.approx(24**0.5 / 96)
    # hidden matrices start m^-1/2 smaller (the projections into the residual stream also by
    # 1/sqrt(2 * n_layer), as under sp); embeddings and lm_head as under sp
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02 / math.sqrt(m), rel=0.03)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02 / math.sqrt(m), rel=0.03)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4 * m), rel=0.03)
    for weight in (model.transformer.wte.weight, model.transformer.wpe.weight, model.lm_head.weight):
        assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(block.ln_1.weight, torch.ones(384)) and torch.equal(
        block.attn.c_attn.bias, torch.zeros(3 * 384)
    )
    # the hidden matrices train at lr / m, with weight_decay * m (so lr * weight_decay, what
    # AdamW takes off a weight each step, stays); everything else at lr
    optim = OptimConfig(lr=1e-2, weight_decay=0.1)
    groups = {g["name"]: g for g in adamw(model, optim).param_groups}
    assert {id(p) for p in groups["hidden"]["params"]} == {id(p) for p in model.hidden_matrices()}
    assert len(groups["hidden"]["params"]) == 2 * 4  # c_attn, c_proj, c_fc, mlp.c_proj a block
    assert groups["hidden"]["lr"] == pytest.approx(1e-2 / m)
    assert groups["hidden"]["weight_decay"] == pytest.approx(0.1 * m)
    assert groups["decay"]["lr"] == groups["no_decay"]["lr"] == 1e-2
    assert {id(p) for p in groups["decay"]["params"]} == {
        id(model.transformer.wte.weight),
        id(model.transformer.wpe.weight),
        id(model.lm_head.weight),
    }
    # the logits are lm_head's divided by m
    readout = []
    model.lm_head.register_forward_hook(lambda _m, _i, out: readout.append(out))
    logits, _ = model(torch.zeros(1, 8, dtype=torch.long))
    assert torch.allclose(logits, readout[0] / m)


def test_the_standard_parametrization_has_two_groups_at_one_learning_rate() -> None:
    model = create_model(GPTConfig(**SMALL | {"n_embd": 384}, base_width=96))  # sp: base_width unused
    assert model.config.width_multiplier == 1
    assert model.config.attention_scale == 96**-0.5
    groups = adamw(model, OptimConfig(lr=1e-2)).param_groups
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert all(g["lr"] == 1e-2 for g in groups)


def growth(sizes: dict[int, dict[str, float]], layers: list[str]) -> float:
    """How much the layers' outputs grew from the narrowest width to the widest (geometric mean)."""
    narrow, wide = min(sizes), max(sizes)
    return math.exp(statistics.fmean(math.log(sizes[wide][name] / sizes[narrow][name]) for name in layers))


@pytest.mark.slow
def test_coordinate_check_is_flat_across_widths_under_mup_and_grows_under_sp(shakespeare) -> None:
    datamodule = TextDataModule(path=str(shakespeare), block_size=32, batch_size=8)
    datamodule.prepare_data()
    datamodule.setup("fit")
    windows = RandomWindows(datamodule.train_data, 32, 8, seed=0, rank=0, start_step=0)
    blocks = ["h.0.attn", "h.0.mlp", "h.1.attn", "h.1.mlp"]
    grew = {}
    for parametrization in ("sp", "mup"):
        sizes = {}
        for width in (64, 256):
            config = GPTConfig(**SMALL | {"n_embd": width, "block_size": 32}, parametrization=parametrization)
            seeds = []
            for seed in range(3):
                torch.manual_seed(seed)
                seeds.append(coordinate_sizes(config, OptimConfig(lr=5.9e-3), windows, steps=3))
            sizes[width] = {name: statistics.fmean(s[name] for s in seeds) for name in seeds[0]}
        grew[parametrization] = growth(sizes, blocks)
        assert 0.8 < sizes[256]["embedding"] / sizes[64]["embedding"] < 1.25  # the same under both
    # 4x the width: under sp each block's output grows several times over; under mup it stays
    assert grew["sp"] > 4
    assert 0.33 < grew["mup"] < 2
    assert grew["sp"] > 5 * grew["mup"]


@pytest.mark.slow
def test_a_mup_run_keeps_its_parametrization_to_resume_evaluate_fine_tune_and_export(
    tmp_path: Path, shakespeare: Path
) -> None:
    run_dir = tmp_path / "mup"
    # m = 2, with AdamW (gptlab's muP scales AdamW's learning rates)
    mup = ["model.n_embd=64", "model.parametrization=mup", "model.base_width=32", "optim=adamw"]
    result = train_here(run_dir, *TINY, *mup, "optim.lr=1e-2", "logger=csv")
    assert result.returncode == 0, result.stderr
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(last)["hyper_parameters"]["model"]
    assert (saved["parametrization"], saved["base_width"]) == ("mup", 32)

    # evaluated as the run validated it (an sp model of these weights would score otherwise)
    result = run_here("eval", f"ckpt_path={last}", f"out_file={tmp_path / 'eval.json'}")
    assert result.returncode == 0, result.stderr
    scored = json.loads((tmp_path / "eval.json").read_text())["val_loss"]
    assert scored == pytest.approx(read_summary(run_dir)["final_val_loss"], abs=1e-4)

    # resumed: as mup (a resume that said sp is refused), and on to the end
    refused = train_here(run_dir, f"ckpt_path={run_dir}", "model.parametrization=sp")
    assert refused.returncode == 1
    assert "model.parametrization='sp' contradicts the checkpoint" in refused.stderr.strip().splitlines()[-1]
    result = train_here(run_dir, f"ckpt_path={run_dir}", "trainer.max_steps=45")
    assert result.returncode == 0, result.stderr
    assert read_summary(run_dir)["steps"] == 45
    assert load_checkpoint(last)["hyper_parameters"]["model"]["parametrization"] == "mup"

    # fine-tuned: the checkpoint's parametrization with its architecture
    result = train_here(
        tmp_path / "tuned", *TINY, f"init_from={run_dir}", "optim=adamw", "trainer.max_steps=5", "logger=csv"
    )
    assert result.returncode == 0, result.stderr
    tuned = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.ckpt")["hyper_parameters"]["model"]
    assert (tuned["parametrization"], tuned["base_width"], tuned["n_embd"]) == ("mup", 32, 64)

    # to transformers: the multipliers folded into the weights, the same logits
    transformers = pytest.importorskip("transformers")
    assert run_here("convert", "to_hf", str(last), str(tmp_path / "hf")).returncode == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf_model.config.tie_word_embeddings is False
    model, tokenizer = model_from_checkpoint(load_checkpoint(last))
    ids = torch.tensor([tokenizer.encode(shakespeare.read_text()[:16])])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model.eval()(ids)[0], atol=1e-5, rtol=0)
    # to nanoGPT, whose lm_head is the token embedding: refused in one line, nothing written
    refused = run_here(
        "convert", "to_nanogpt", str(last), str(tmp_path / "ckpt.pt"), str(tmp_path / "meta.pkl")
    )
    assert refused.returncode == 1
    assert "model.parametrization=mup at n_embd=64, base_width=32" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "ckpt.pt").exists()


@pytest.mark.slow
def test_a_flops_budget_sets_the_steps_and_the_schedule_and_the_summary_counts_the_flops(
    tmp_path: Path, shakespeare: Path
) -> None:
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps=")]  # the budget sets the steps
    # the tiny model's FLOPs a step: per token, times 8 windows of 16 tokens, times 2 batches
    # accumulated into each step
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65, position="rope")
    step_flops = create_model(config).training_flops_per_token() * 8 * 16 * 2
    budget = 24.5 * step_flops
    result = train_here(
        tmp_path / "run", *tiny, f"flops_budget={budget}", "trainer.accumulate_grad_batches=2", "logger=csv"
    )
    assert result.returncode == 0, result.stderr
    summary = read_summary(tmp_path / "run")
    assert summary["steps"] == 24
    assert summary["train_flops"] == 24 * step_flops <= budget
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["optim"]["decay_steps"] == 24  # the schedule ends with it

    both = train_here(tmp_path / "both", *TINY, f"flops_budget={budget}")
    assert both.returncode == 1
    assert "are both given: the budget sets the steps, give one of them" in both.stderr
