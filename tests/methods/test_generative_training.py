"""The shared training step (``ml.generative.training``): the EMA's schedule, the clipped
optimiser step, and release exports that rewrite every committed checkpoint to the letter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from ml.generative.training import EMA, Optimiser, clipped_step, cpu_state, lr_at, save_atomic

WEIGHTS = Path(__file__).resolve().parents[2] / "ml" / "weights"


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def test_ema_is_a_frozen_copy_that_follows_the_model() -> None:
    model = _model()
    ema = EMA(model, 0.9)
    assert ema.module is not model and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(step=0)
    for avg, old, new in zip(ema.averaged, start, model.parameters(), strict=True):
        torch.testing.assert_close(avg, 0.9 * old + 0.1 * new.detach())
        assert new.requires_grad  # the model itself is untouched


def test_ema_update_equals_the_per_tensor_lerp_it_replaced() -> None:
    model, twin = _model(), _model()
    ema = EMA(model, 0.998)
    by_hand = [p.detach().clone() for p in twin.parameters()]
    for step in range(3):
        with torch.no_grad():
            for p, q in zip(model.parameters(), twin.parameters(), strict=True):
                noise = torch.randn(p.shape)
                p.add_(noise)
                q.add_(noise)
        ema.update(step)
        for e, q in zip(by_hand, twin.parameters(), strict=True):
            e.lerp_(q.detach(), 1.0 - 0.998)
    for a, b in zip(ema.averaged, by_hand, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("step", "decay"), [(0, 0.1), (10, 0.55), (10_000, 0.999)])
def test_ema_warmup_starts_with_a_low_decay(step: int, decay: float) -> None:
    model = _model()
    ema = EMA(model, 0.999, warmup=True)
    before = [p.detach().clone() for p in ema.averaged]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(step)
    for avg, old in zip(ema.averaged, before, strict=True):
        torch.testing.assert_close(avg, old + (1.0 - decay), rtol=0, atol=1e-6)


def test_clipped_step_clips_the_gradient_norm() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = 1e3 * model(torch.ones(2, 4)).sum()
    clipped_step(opt, loss, model.parameters(), max_norm=0.5)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert float(total) == pytest.approx(0.5, rel=1e-4)


def test_optimiser_sets_the_rate_steps_and_averages() -> None:
    model = _model()
    ema = EMA(model, 0.5)
    optim = Optimiser(model, 1e-3, betas=(0.9, 0.99), weight_decay=0.0, ema=ema)
    assert optim.opt.param_groups[0]["betas"] == (0.9, 0.99)
    before = [p.detach().clone() for p in model.parameters()]
    optim.step(model(torch.ones(3, 4)).pow(2).sum(), lr=0.05, step=0)
    assert optim.lr == 0.05
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert all(moved)
    for avg, old, new in zip(ema.averaged, before, model.parameters(), strict=True):
        torch.testing.assert_close(avg, 0.5 * old + 0.5 * new.detach())


def test_lr_at_warms_up_then_decays_to_a_tenth() -> None:
    assert lr_at(0, 0.0, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(10, 0.0, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(50, 1.0, 1.0, warmup=10) == pytest.approx(0.1)


def test_cpu_state_casts_floating_tensors_only(tmp_path: Path) -> None:
    model = _model()
    model.register_buffer("count", torch.arange(3))
    model.register_buffer("stat", torch.tensor([1.0 + 2**-12]))
    state = cpu_state(model, torch.bfloat16, keep_float32=("stat",))
    assert state["0.weight"].dtype == torch.bfloat16
    assert state["count"].dtype == torch.int64
    assert state["stat"].dtype == torch.float32 and float(state["stat"]) == 1.0 + 2**-12
    path = tmp_path / "sub" / "w.pt"
    size = save_atomic({"state": state}, path)
    assert size == path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == ["w.pt"]  # no temporary file left
    assert torch.equal(torch.load(path, weights_only=True)["state"]["count"], torch.arange(3))


def _reexport_conditional(src: Path, dst: Path) -> None:
    from ml.methods.conditional.checkpoint import load_release, save_release

    model, info = load_release(src)
    save_release(model, dst, info)


def _reexport_wyckoff(src: Path, dst: Path) -> None:
    from ml.methods.conditional.checkpoint import load_wyckoff_release, save_wyckoff_release

    model, stats, info = load_wyckoff_release(src)
    dtype = info.get("stored_dtype", "float32")  # the shipped file is float16 since 2026-12-05
    save_wyckoff_release(model, dst, stats.to_dict(), info, dtype=dtype)


def _reexport_proxy(src: Path, dst: Path) -> None:
    from ml.methods.crystal_gfn.proxy import load_proxy, save_proxy

    model, info = load_proxy(src)
    save_proxy(model, dst, info)


def _reexport_gfn(src: Path, dst: Path) -> None:
    from ml.methods.crystal_gfn.gfn import load_gfn, read_gfn, save_gfn

    payload = read_gfn(src)
    # Only the keys of the environment and reward are saved: fakes that give the stored ones.
    spec = SimpleNamespace(key=lambda: payload["env"])
    reward = SimpleNamespace(key=lambda: payload["reward"])
    save_gfn(dst, load_gfn(payload), spec, reward, payload["proxy"], payload["info"])  # type: ignore[arg-type]


def _reexport_cliqueflowmer(src: Path, dst: Path) -> None:
    from ml.methods.cliqueflowmer.checkpoint import export_checkpoint, load_checkpoint

    model, info = load_checkpoint(src)
    export_checkpoint(model, dst, info["property"], info["meta"])


@pytest.mark.parametrize(
    ("name", "key", "reexport"),
    [
        ("conditional-uniform.pt", "state", _reexport_conditional),
        ("conditional-wyckoff.pt", "state", _reexport_wyckoff),
        ("crystal_gfn_proxy.pt", "state", _reexport_proxy),
        ("crystal_gfn-paper.pt", "state", _reexport_gfn),
        ("cliqueflowmer_eform.pt", "state_dict", _reexport_cliqueflowmer),
    ],
)
def test_committed_checkpoints_reexport_to_the_same_state(
    tmp_path: Path, name: str, key: str, reexport: Callable[[Path, Path], Any]
) -> None:
    """Loading a committed release and exporting it again gives the same keys, dtypes and
    values: the shared export writes what each method's own export wrote."""
    src = WEIGHTS / name
    if not src.is_file():
        pytest.skip(f"{name} not committed")
    dst = tmp_path / name
    reexport(src, dst)
    old = torch.load(src, map_location="cpu", weights_only=True)
    new = torch.load(dst, map_location="cpu", weights_only=True)
    assert sorted(new) == sorted(old)
    assert list(new[key]) == list(old[key])
    for k, v in old[key].items():
        assert new[key][k].dtype == v.dtype, k
        assert torch.equal(new[key][k], v), k
