"""The training step and checkpoint export that the generative trainers share.

Every trainer here (CliqueFlowmer, the free-cell and Wyckoff conditional generators, MatInvent's
prior, Crystal-GFN's proxy and GFlowNet) takes the same step: zero the gradients, back-propagate,
clip the gradient norm, step the optimiser, then (where the trainer releases averaged weights)
move an exponential moving average (EMA) of the weights towards the new ones. Releases are
written atomically from a CPU copy of the state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "EMA",
    "Optimiser",
    "clipped_step",
    "cpu_state",
    "lr_at",
    "save_atomic",
    "set_lr",
]


def lr_at(step: int, progress: float, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine from ``base`` down to 10% of it over the budget."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def clipped_step(
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: Iterable[torch.Tensor],
    max_norm: float = 1.0,
) -> None:
    """One optimiser step on ``loss`` with the gradient norm of ``params`` clipped."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


class EMA:
    """An averaged copy of a model (``module``, in eval mode, no gradients): the weights a
    trainer releases, smoother than the last step's. Make it before any ``torch.compile`` of
    the model, so the copy stays a plain module that exports and evaluates at any shape.

    With ``warmup`` the decay starts low, ``min(decay, (1 + step) / (10 + step))``, so the
    average is not dominated by the random initialisation in short runs."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.averaged = list(self.module.parameters())
        self._source = list(model.parameters())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the model's weights after optimiser step ``step``
        (counted from 0)."""
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        torch._foreach_lerp_(self.averaged, self._source, 1.0 - decay)


class Optimiser:
    """AdamW, gradient-norm clipping and the optional weight average, stepped together."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        max_norm: float = 1.0,
        ema: EMA | None = None,
    ) -> None:
        self.params = list(model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.max_norm = max_norm
        self.ema = ema

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def step(self, loss: torch.Tensor, lr: float, step: int) -> None:
        """Optimiser step ``step`` (counted from 0) on ``loss`` at learning rate ``lr``."""
        set_lr(self.opt, lr)
        clipped_step(self.opt, loss, self.params, self.max_norm)
        if self.ema is not None:
            self.ema.update(step)


def cpu_state(
    module: nn.Module, dtype: torch.dtype = torch.float32, keep_float32: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """The module's state on the CPU for a release: floating tensors in ``dtype``, those named
    in ``keep_float32`` (small, precision-critical) in float32, others as they are."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach()
        if v.is_floating_point():
            v = v.to("cpu", torch.float32 if k in keep_float32 else dtype)
        out[k] = v.cpu()
    return out


def save_atomic(payload: dict[str, Any], path: Path) -> int:
    """``torch.save`` through a temporary file, so a save cut off mid-write leaves the previous
    file intact; returns the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path.stat().st_size
