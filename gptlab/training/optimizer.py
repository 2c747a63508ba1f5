"""What a run trains with (the optim settings, conf/optim/): the optimizer and its lr schedule.

    adamw   nanoGPT's AdamW: weight decay on matrices, none on biases and gains
    muon    torch.optim.Muon on the blocks' matrices, AdamW on everything else (embeddings,
            lm_head, gains and biases), each at its own lr: one torch Optimizer to Lightning,
            whose automatic optimization (accumulation, clipping, precision, checkpoints)
            takes one

    cosine  linear warmup to lr, cosine decay to the floor at decay_steps
    wsd     warmup, stable (lr held), decay: a linear warmdown over the last warmdown_fraction
            of decay_steps to the floor

The schedule is a factor of each parameter group's own lr, so Muon's and AdamW's groups follow it
together: it ends at min_lr / lr of each group's lr (min_lr itself for AdamW's), or at
min_lr_ratio of it.
"""

import math
from functools import partial
from typing import Any

import torch

from gptlab.config import OptimConfig
from gptlab.model import LanguageModel


def adamw_groups(
    model: LanguageModel, optim: OptimConfig, skip: set[int] = frozenset()
) -> list[dict[str, Any]]:
    """nanoGPT's parameter groups: weight decay on matrices (linear and embedding weights), none
    on biases and norm gains; the parameters in `skip` (Muon's) left out. With optim.embedding_lr
    the embeddings are a group of their own at that lr.

    Under muP the hidden matrices are a group of their own at lr / m (m = n_embd / base_width),
    with weight_decay * m: AdamW shrinks a weight by lr * weight_decay a step, which so stays the
    same at every width (as the mup package's MuAdamW does it)."""
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]  # a tied weight once
    m = model.config.width_multiplier
    hidden = {id(p) for p in model.hidden_matrices()} if model.config.parametrization == "mup" else set()
    embeddings = set()
    if optim.embedding_lr is not None:  # a group of their own (a tied lm_head with them)
        embeddings = {
            id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)
        }
    groups = [  # named: LearningRateMonitor logs lr/decay and lr/no_decay (and lr/hidden, lr/muon, ...)
        {
            "params": [p for p in params if p.dim() >= 2 and id(p) not in hidden | embeddings],
            "weight_decay": optim.weight_decay,
            "name": "decay",
        },
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay"},
    ]
    if embeddings:
        groups.append(
            {
                "params": [p for p in params if id(p) in embeddings],
                "lr": optim.embedding_lr,
                "weight_decay": optim.weight_decay,
                "name": "embedding",
            }
        )
    if hidden:
        groups.append(
            {
                "params": [p for p in params if id(p) in hidden],
                "lr": optim.lr / m,
                "weight_decay": optim.weight_decay * m,
                "name": "hidden",
            }
        )
    return groups


def adamw(model: LanguageModel, optim: OptimConfig, skip: set[int] = frozenset()) -> torch.optim.AdamW:
    """AdamW over adamw_groups. fused: one kernel for all parameters (CUDA and CPU) instead of a loop."""
    groups = adamw_groups(model, optim, skip)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), fused=optim.fused)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon and AdamW as one torch Optimizer. Its param_groups are the two optimizers' own group
    dicts (Muon's first), so an lr scheduler, gradient clipping and LearningRateMonitor see every
    group; its state is theirs (keyed by parameter, so they never clash), so one state_dict saves
    both and load_state_dict restores both, as a resumed run needs."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], defaults={})
        self.share_groups_and_state()

    def share_groups_and_state(self) -> None:
        muon_groups = len(self.muon.param_groups)
        self.muon.param_groups = self.param_groups[:muon_groups]
        self.adamw.param_groups = self.param_groups[muon_groups:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:  # (Lightning's: forward, backward and clipping)
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # new group dicts and a new state: hand them over again
        self.share_groups_and_state()


def muon_with_adamw(model: LanguageModel, optim: OptimConfig) -> MuonWithAdamW:
    """Muon on the matrices inside the blocks (model.hidden_matrices: n_embd wide on at least
    one side), at optim.muon_lr; AdamW on the rest at optim.lr. Muon orthogonalises each
    matrix's update, which suits a matrix mapping features to features, not an embedding (a
    table of rows) or lm_head (scores over a vocabulary). A stacked matrix is one to Muon: c_attn
    holds q, k and v, and SwiGLU's c_fc the gate and the up projection (nanochat and the speedrun
    keep them apart), and its lr adjustment sees the stacked shape."""
    matrices = model.hidden_matrices()
    muon = torch.optim.Muon(
        [{"params": matrices, "name": "muon"}],
        lr=optim.muon_lr,
        weight_decay=optim.muon_weight_decay,
        momentum=optim.muon_momentum,
        nesterov=optim.muon_nesterov,
        ns_steps=optim.muon_ns_steps,
        adjust_lr_fn=optim.muon_adjust_lr,
    )
    return MuonWithAdamW(muon, adamw(model, optim, skip={id(p) for p in matrices}))


def build_optimizer(model: LanguageModel, optim: OptimConfig) -> torch.optim.Optimizer:
    return muon_with_adamw(model, optim) if optim.name == "muon" else adamw(model, optim)


def floor(optim: OptimConfig) -> float:
    """The lr the schedule ends at: min_lr, or min_lr_ratio of lr."""
    return optim.min_lr if optim.min_lr_ratio is None else optim.min_lr_ratio * optim.lr


def learning_rate(
    step: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    decay_steps: int,
    schedule: str = "cosine",
    warmdown_fraction: float = 0.2,
) -> float:
    """The lr at `step`: linear warmup to lr, then cosine decay to min_lr at decay_steps (cosine),
    or lr held until the last warmdown_fraction of decay_steps, then linear to min_lr (wsd); min_lr
    after decay_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    warmdown_start = max(warmup_steps, decay_steps - round(warmdown_fraction * decay_steps))
    if step < warmdown_start:
        return lr
    progress = (step - warmdown_start) / max(1, decay_steps - warmdown_start)
    return lr + progress * (min_lr - lr)


def schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """optim's schedule as a factor of each group's own lr (LambdaLR's)."""
    at = partial(
        learning_rate,
        lr=optim.lr,
        min_lr=floor(optim),
        warmup_steps=optim.warmup_steps,
        decay_steps=optim.decay_steps,
        schedule=optim.schedule,
        warmdown_fraction=optim.warmdown_fraction,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: at(step) / optim.lr)
