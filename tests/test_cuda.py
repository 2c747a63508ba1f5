"""On a CUDA GPU only (CI has none; they run where a GPU is at hand): the GPU path end to end.
The fast run's switches (bf16-mixed, fused AdamW, SDPA, torch.compile) train, and the
checkpoint they write is scored, sampled and resumed on the GPU and sampled on the CPU."""

import json
from pathlib import Path

import pytest
import torch

from gptlab.model import GPT, GPTConfig
from tests.conftest import TINY, read_summary, run_here, train_here

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FAST = ["model.attention=sdpa", "model.compile=true", "optim.fused=true", "trainer.precision=bf16-mixed"]


def test_kv_cache_gives_the_uncached_tokens_on_the_gpu() -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64, init="gpt2")
    model = GPT(config).cuda().eval()
    context = torch.randint(0, 65, (3, 5), device="cuda")
    # greedy (top_k=1), past block_size so that the cache refills from the cropped window too
    cached = model.generate(context, 60, top_k=1, use_cache=True)
    uncached = model.generate(context, 60, top_k=1, use_cache=False)
    assert cached.device.type == "cuda"
    assert torch.equal(cached, uncached)


@pytest.mark.slow
def test_fast_switches_train_on_the_gpu_and_the_checkpoint_serves_gpu_and_cpu(
    tmp_path: Path, shakespeare: Path
) -> None:
    run = tmp_path / "run"
    result = train_here(run, *TINY, *FAST, "trainer.max_steps=60", "logger=csv")
    assert result.returncode == 0, result.stderr
    summary = read_summary(run)
    assert summary["steps"] == 60
    assert summary["best_val_loss"] < 3.5  # a 65-character vocabulary starts at ln 65 = 4.17

    scored = tmp_path / "eval.json"
    evaluated = run_here(
        "eval", f"ckpt_path={run}/checkpoints/last.ckpt", "device=cuda", f"out_file={scored}"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(scored.read_text())["val_loss"] == pytest.approx(summary["final_val_loss"], abs=2e-2)

    for device in ("cuda", "cpu"):
        sampled = run_here(
            "sample", f"ckpt_path={run}", f"device={device}", "max_new_tokens=50", "prompt=ROMEO:"
        )
        assert sampled.returncode == 0, sampled.stderr
        assert "ROMEO:" in sampled.stdout

    resumed = train_here(run, *TINY, *FAST, "trainer.max_steps=90", "logger=csv", f"ckpt_path={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run)["steps"] == 90
