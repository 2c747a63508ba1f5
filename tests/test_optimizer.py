"""The optimizers (optim=adamw, optim=muon) and lr schedules (cosine, wsd, a floor that follows the
lr): Muon's groups, one optimizer that saves and restores both, exact resume and DDP with it."""

import copy
import math
from pathlib import Path

import pytest
import torch

from gptlab.config import OptimConfig
from gptlab.model import GPT, GPTConfig
from gptlab.training.optimizer import MuonWithAdamW, build_optimizer, learning_rate, schedule
from tests.conftest import TINY, read_summary, run_here, train, train_here
from tests.test_runs import metric_rows, validations

MODEL = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=65)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest_each_parameter_once() -> None:
    model = GPT(MODEL)
    optimizer = build_optimizer(model, OptimConfig(name="muon", lr=3e-3, muon_lr=0.05))
    assert isinstance(optimizer, MuonWithAdamW)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert list(groups) == ["muon", "decay", "no_decay"]
    names = {id(p): n for n, p in model.named_parameters()}
    named = {name: {names[id(p)] for p in group["params"]} for name, group in groups.items()}
    assert named["muon"] == {
        n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("transformer.h.")
    }
    assert named["decay"] == {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}
    assert all(n.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")) for n in named["no_decay"])
    every = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))  # each parameter once
    assert groups["muon"]["lr"] == 0.05 and groups["decay"]["lr"] == groups["no_decay"]["lr"] == 3e-3
    # the two optimizers hold the very groups Lightning, the schedule and clipping see
    assert optimizer.muon.param_groups[0] is groups["muon"]
    assert optimizer.adamw.param_groups == [groups["decay"], groups["no_decay"]]


def test_the_embeddings_take_their_own_lr_when_given_one() -> None:
    model = GPT(MODEL)
    plain = {group["name"] for group in build_optimizer(model, OptimConfig(name="muon")).param_groups}
    assert plain == {"muon", "decay", "no_decay"}  # without it, the groups of before
    groups = {
        group["name"]: group
        for group in build_optimizer(model, OptimConfig(name="muon", lr=3e-3, embedding_lr=0.03)).param_groups
    }
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["embedding"]["params"]} == {
        "transformer.wte.weight",
        "transformer.wpe.weight",
    }
    assert {names[id(p)] for p in groups["decay"]["params"]} == {"lm_head.weight"}
    assert groups["embedding"]["lr"] == 0.03 and groups["decay"]["lr"] == 3e-3
    every = [id(p) for group in groups.values() for p in group["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))


def steps(model: GPT, optimizer: torch.optim.Optimizer, n: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        tokens = torch.randint(65, (4, 9), generator=generator)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_one_state_dict_saves_and_restores_muon_and_adamw() -> None:
    optim = OptimConfig(name="muon", warmup_steps=2, decay_steps=10)
    torch.manual_seed(0)
    model = GPT(MODEL)
    optimizer = build_optimizer(model, optim)
    steps(model, optimizer, 3, seed=1)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert len(saved_optimizer["state"]) == len(list(model.parameters()))  # Muon's momentum, AdamW's moments
    steps(model, optimizer, 3, seed=2)

    restored = GPT(MODEL)
    restored.load_state_dict(saved_model)
    restored_optimizer = build_optimizer(restored, optim)
    restored_optimizer.load_state_dict(saved_optimizer)
    steps(restored, restored_optimizer, 3, seed=2)
    for (name, param), restored_param in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(param, restored_param), name


def test_the_schedule_is_a_factor_of_every_groups_own_lr() -> None:
    optim = OptimConfig(name="muon", lr=1e-3, muon_lr=0.02, min_lr_ratio=0.1, warmup_steps=0, decay_steps=10)
    optimizer = build_optimizer(GPT(MODEL), optim)
    lr_schedule = schedule(optimizer, optim)
    for _ in range(10):
        optimizer.step()
        lr_schedule.step()
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx({"muon": 0.002, "decay": 1e-4, "no_decay": 1e-4})  # each at 0.1 of its own


def test_warmup_stable_then_linear_warmdown() -> None:
    lrs = [
        learning_rate(
            step,
            lr=1e-3,
            min_lr=1e-4,
            warmup_steps=10,
            decay_steps=100,
            schedule="wsd",
            warmdown_fraction=0.2,
        )
        for step in range(110)
    ]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # the warmup, as cosine's
    assert lrs[10:80] == [1e-3] * 70  # stable until the last 20 of 100 steps
    assert lrs[90] == pytest.approx(1e-3 + 0.5 * (1e-4 - 1e-3))  # half way down the line
    assert all(a > b for a, b in zip(lrs[80:100], lrs[81:101], strict=True))
    assert lrs[100:] == [1e-4] * 10


def test_a_floor_that_follows_the_lr_lets_an_lr_search_go_below_min_lr(run_train) -> None:
    refused = run_train(*TINY, "optim.lr=5e-5", "logger=none")
    assert refused.returncode == 1
    assert "optim.min_lr=0.0001 is not allowed: use 0 <= min_lr <= lr (5e-05)" in refused.stderr
    result = run_train(*TINY, "optim.lr=5e-5", "optim.min_lr_ratio=0.1", "logger=csv", run_name="ratio")
    assert result.returncode == 0, result.stderr
    lrs = [float(row["lr/decay"]) for row in metric_rows(result.run_dir) if row["lr/decay"]]
    assert min(lrs) == pytest.approx(5e-6, rel=0.05)  # the cosine's end: 0.1 of this lr


@pytest.mark.slow
def test_a_muon_run_resumed_is_the_same_run(tmp_path: Path, shakespeare: Path) -> None:
    settings = [*TINY, "optim=muon", "model.dropout=0.1", "optim.decay_steps=60", "logger=csv"]
    whole = train_here(tmp_path / "whole", *settings, "trainer.max_steps=60")
    assert whole.returncode == 0, whole.stderr
    first = train_here(tmp_path / "resumed", *settings, "trainer.max_steps=30")
    assert first.returncode == 0, first.stderr
    resumed = run_here("train", f"ckpt_path={tmp_path / 'resumed'}", "trainer.max_steps=60")
    assert resumed.returncode == 0, resumed.stderr
    got, want = validations(tmp_path / "resumed"), validations(tmp_path / "whole")
    assert list(got) == list(want) == [15, 30, 45, 60]
    assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-5)

    # the optimizer is the checkpoint's: another is refused, in one line, before anything is written
    other = run_here("train", f"ckpt_path={tmp_path / 'resumed'}", "optim=adamw", "trainer.max_steps=90")
    assert other.returncode == 1
    assert other.stderr.strip().splitlines()[-1] == (
        "error: optim=adamw is not allowed: the checkpoint was trained with optim=muon, and a resumed run "
        "keeps its optimizer and its state; resume with optim=muon"
    )


@pytest.mark.slow
def test_muon_trains_with_ddp_on_two_cpu_processes_with_accumulation_and_clipping(tmp_path: Path) -> None:
    result = train(
        tmp_path / "run",
        *TINY,
        "optim=muon",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.accumulate_grad_batches=2",
        "trainer.gradient_clip_val=0.5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "anonymous" not in result.stderr  # wandb's warning about a setting Lightning passes unasked
    summary = read_summary(result.run_dir)
    assert summary["world_size"] == 2 and summary["steps"] == 30
    assert summary["best_val_loss"] < math.log(65) - 0.5
