"""Trajectory balance training, replay and sampling of Crystal-GFN (batched in torch).

Trajectory balance (Malkin et al. 2022): for a trajectory tau ending in x,
``(log Z + sum log P_F(s'|s) - log R(x) - sum log P_B(s|s'))^2``. Forward probabilities
include the density of the lattice action (mixture of Betas on the unit cube of the free
lattice coordinates); stop and the lattice step have a single parent (P_B = 1). A batch mixes
fresh trajectories (with ``explore`` of their discrete steps and lattices drawn uniformly, as
the paper's 10 %) and trajectories replayed from a buffer of the best ones seen, re-scored
under the current policies (off-policy, which trajectory balance allows). ``log Z`` gets its
own, larger learning rate, and starts from an importance-sampling estimate on the first batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ml.generative.training import clipped_step, cpu_state, save_atomic
from ml.methods.crystal_gfn.env import CrystalEnv, EnvSpec, States
from ml.methods.crystal_gfn.policy import Policy, PolicyConfig
from ml.methods.crystal_gfn.reward import Reward

__all__ = [
    "GFNConfig",
    "Samples",
    "TrainStats",
    "concat_samples",
    "load_gfn",
    "new_policy",
    "rollout",
    "sample",
    "save_gfn",
    "tb_loss",
    "train",
]

FORMAT = "matdesign-crystal-gfn-v1"


@dataclass
class GFNConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    lr_log_z: float = 0.05
    explore: float = 0.1
    replay_fraction: float = 0.25
    replay_size: int = 4096
    max_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Samples:
    """Finished trajectories. ``dead`` rows ended without a crystal (no lattice, log reward
    the floor); ``actions`` (B, T) holds the discrete actions (-1 pads)."""

    actions: torch.Tensor
    lattice_u: torch.Tensor  # (B, 6) unit-cube lattice action
    states: States
    log_pf: torch.Tensor
    log_pb: torch.Tensor
    log_r: torch.Tensor
    dead: torch.Tensor
    lattice: torch.Tensor  # (B, 6) conventional a, b, c, alpha, beta, gamma
    space_group: torch.Tensor  # (B,) international number (0 when dead before choosing)
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.log_r.shape[0])

    def select(self, idx: torch.Tensor) -> Samples:
        s = self.states
        states = States(*(getattr(s, f)[idx] for f in s.__dataclass_fields__))
        return Samples(
            self.actions[idx],
            self.lattice_u[idx],
            states,
            self.log_pf[idx],
            self.log_pb[idx],
            self.log_r[idx],
            self.dead[idx],
            self.lattice[idx],
            self.space_group[idx],
            {k: v[idx] for k, v in self.values.items()},
        )


def new_policy(env: CrystalEnv, hidden: int = 256, layers: int = 3, mixtures: int = 5) -> Policy:
    cfg = PolicyConfig(env.n_in, env.n_actions, env.n_back, hidden, layers, mixtures)
    return Policy(cfg).to(env.device)


def rollout(
    env: CrystalEnv,
    policy: Policy,
    reward: Reward,
    n: int,
    explore: float = 0.0,
    actions: torch.Tensor | None = None,
    lattice_u: torch.Tensor | None = None,
) -> Samples:
    """Run ``n`` trajectories from the source: sampled (``explore`` of the steps uniform over
    the valid actions) or, with ``actions``/``lattice_u``, replayed. Log-probabilities carry
    gradients unless called under ``torch.no_grad``."""
    dev = env.device
    s = env.initial(n)
    log_pf = torch.zeros(n, device=dev)
    log_pb = torch.zeros(n, device=dev)
    taken: list[torch.Tensor] = []
    t = 0
    while True:
        active = ~(s.done | s.dead)
        if not active.any():
            break
        mask = env.forward_mask(s)
        stuck = active & ~mask.any(1)
        s.dead = s.dead | stuck
        active = active & ~stuck
        column = torch.full((n,), -1, dtype=torch.long, device=dev)
        rows = torch.nonzero(active).flatten()
        if len(rows):
            logp = policy.forward_logits(env.encode(s)[rows], mask[rows])
            if actions is not None:
                a = actions[rows, t]
            else:
                with torch.no_grad():
                    probs = logp.exp()
                    if explore > 0:
                        valid = mask[rows].float()
                        probs = (1 - explore) * probs + explore * valid / valid.sum(1, keepdim=True)
                    a = torch.multinomial(probs, 1).squeeze(1)
            log_pf = log_pf.index_add(0, rows, logp.gather(1, a[:, None]).squeeze(1))
            s, back = env.step(s, a, rows)
            has_parent = back >= 0
            if has_parent.any():
                brows = rows[has_parent]
                blogp = policy.backward_logits(env.encode(s)[brows], env.backward_mask(s)[brows])
                log_pb = log_pb.index_add(
                    0, brows, blogp.gather(1, back[has_parent][:, None]).squeeze(1)
                )
            column[rows] = a
        taken.append(column)
        t += 1
    acts = torch.stack(taken, 1) if taken else torch.zeros(n, 0, dtype=torch.long, device=dev)
    # The lattice step of every finished composition.
    u = torch.full((n, 6), 0.5, device=dev)
    lattice = torch.zeros(n, 6, device=dev)
    log_r = torch.full((n,), reward.dead_log_reward, device=dev)
    values: dict[str, torch.Tensor] = {}
    rows = torch.nonzero(s.done & ~s.dead).flatten()
    space_group = torch.zeros(n, dtype=torch.long, device=dev)
    if len(rows):
        gi = s.gi[rows]
        mix = policy.lattice(env.encode(s)[rows])
        if lattice_u is not None:
            ur = lattice_u[rows]
        else:
            ur = mix.sample()
            if explore > 0:
                uniform = torch.rand(len(rows), 1, device=dev) < explore
                ur = torch.where(uniform, torch.rand_like(ur).clamp(1e-5, 1 - 1e-5), ur)
        free = env.free_mask(gi)
        log_pf = log_pf.index_add(0, rows, (mix.log_prob(ur) * free).sum(1))
        u[rows] = ur.detach()
        counts = s.counts[rows]
        lat = env.to_lattice(gi, counts, ur.detach())
        lattice[rows] = lat
        space_group[rows] = env.groups[gi]
        z, count = env.padded(counts)
        conv = counts.sum(1) * env.centring[gi]
        vals = reward.values(env.groups[gi], z, count, lat, conv)
        log_r[rows] = reward.log_reward(vals)
        for k, v in vals.items():
            values[k] = torch.full((n,), float("nan"), device=dev)
            values[k][rows] = v
    return Samples(acts, u, s, log_pf, log_pb, log_r, s.dead.clone(), lattice, space_group, values)


def tb_loss(policy: Policy, traj: Samples) -> torch.Tensor:
    return ((policy.log_z + traj.log_pf - traj.log_r - traj.log_pb) ** 2).mean()


class ReplayBuffer:
    """The best trajectories seen (by log reward), unique by their actions and lattice."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.actions: torch.Tensor | None = None
        self.lattice_u: torch.Tensor | None = None
        self.log_r: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.log_r is None else int(self.log_r.shape[0])

    def add(self, traj: Samples) -> None:
        keep = ~traj.dead
        if not keep.any() or self.size <= 0:
            return
        acts, u, lr = traj.actions[keep], traj.lattice_u[keep], traj.log_r[keep].detach()
        if self.actions is not None:
            width = max(acts.shape[1], self.actions.shape[1])
            acts = torch.cat([_pad(self.actions, width), _pad(acts, width)])
            u = torch.cat([self.lattice_u, u])  # type: ignore[list-item]
            lr = torch.cat([self.log_r, lr])  # type: ignore[list-item]
        key = torch.cat([acts.float(), (u * 1e4).round()], 1)
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
        first = first.scatter_reduce(
            0, inverse, torch.arange(len(inverse), device=inverse.device), "amin"
        )
        order = first[torch.argsort(lr[first], descending=True)][: self.size]
        self.actions, self.lattice_u, self.log_r = acts[order], u[order], lr[order]

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.actions is not None and self.lattice_u is not None
        idx = torch.randint(len(self), (n,), device=self.actions.device)
        return self.actions[idx], self.lattice_u[idx]


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), -1, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], 1)


@dataclass
class TrainStats:
    step: int
    loss: float
    log_z: float
    mean_log_r: float
    dead_fraction: float
    best_log_r: float
    seconds: float
    mean_energy: float


def train(
    env: CrystalEnv,
    policy: Policy,
    reward: Reward,
    cfg: GFNConfig,
    report_every: int = 50,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[TrainStats]:
    """Train ``policy`` in place; yields statistics every ``report_every`` steps and at the end
    (seed torch's global generator beforehand for reproducibility)."""
    net_params = [p for n_, p in policy.named_parameters() if n_ != "log_z"]
    opt = torch.optim.Adam(
        [{"params": net_params, "lr": cfg.lr}, {"params": [policy.log_z], "lr": cfg.lr_log_z}]
    )
    buffer = ReplayBuffer(cfg.replay_size)
    start = time.time()
    window: list[list[float]] = []
    best = -math.inf
    step = 0
    for step in range(1, cfg.steps + 1):
        n_replay = int(cfg.replay_fraction * cfg.batch_size) if len(buffer) else 0
        fresh = rollout(env, policy, reward, cfg.batch_size - n_replay, explore=cfg.explore)
        if step == 1:
            with torch.no_grad():  # log Z from an importance-sampling estimate
                w = fresh.log_r + fresh.log_pb - fresh.log_pf
                policy.log_z.copy_(torch.logsumexp(w, 0) - math.log(len(w)))
        loss = tb_loss(policy, fresh) * len(fresh)
        if n_replay:
            acts, u = buffer.draw(n_replay)
            replayed = rollout(env, policy, reward, n_replay, actions=acts, lattice_u=u)
            loss = loss + tb_loss(policy, replayed) * n_replay
        loss = loss / cfg.batch_size
        clipped_step(opt, loss, net_params, 10.0)
        buffer.add(fresh)
        alive = ~fresh.dead
        best = max(best, float(fresh.log_r[alive].max())) if alive.any() else best
        energy = fresh.values.get("formation_energy")
        window.append(
            [
                loss.item(),
                float(fresh.log_r[alive].mean()) if alive.any() else math.nan,
                float(fresh.dead.float().mean()),
                float(energy[alive].mean()) if energy is not None and alive.any() else math.nan,
            ]
        )
        over = cfg.max_seconds is not None and time.time() - start > cfg.max_seconds
        if step % report_every == 0 or step == cfg.steps or over or should_stop():
            m = torch.tensor(window).nanmean(0).tolist()
            window.clear()
            yield TrainStats(
                step, m[0], policy.log_z.item(), m[1], m[2], best, time.time() - start, m[3]
            )
        if over or should_stop():
            break


@torch.no_grad()
def sample(
    env: CrystalEnv, policy: Policy, reward: Reward, n: int, batch_size: int = 2048, tries: int = 4
) -> tuple[Samples | None, int]:
    """``n`` finished crystals (fewer only if ``tries * n`` trajectories did not yield them;
    None if none did) and the number of dead trajectories drawn on the way."""
    got: list[Samples] = []
    have, dead, drawn = 0, 0, 0
    while have < n and drawn < tries * max(n, 1):
        m = min(batch_size, max(n - have, 1) + 8)
        traj = rollout(env, policy, reward, m)
        drawn += m
        alive = torch.nonzero(~traj.dead).flatten()
        dead += m - len(alive)
        if len(alive):
            got.append(traj.select(alive[: n - have]))
            have += min(len(alive), n - have)
    return (concat_samples(got) if got else None), dead


def concat_samples(parts: list[Samples]) -> Samples:
    if not parts:
        raise RuntimeError("the GFlowNet produced no crystal")
    width = max(p.actions.shape[1] for p in parts)
    states = States(
        *(torch.cat([getattr(p.states, f) for p in parts]) for f in States.__dataclass_fields__)
    )
    keys = parts[0].values.keys()
    return Samples(
        torch.cat([_pad(p.actions, width) for p in parts]),
        torch.cat([p.lattice_u for p in parts]),
        states,
        torch.cat([p.log_pf for p in parts]),
        torch.cat([p.log_pb for p in parts]),
        torch.cat([p.log_r for p in parts]),
        torch.cat([p.dead for p in parts]),
        torch.cat([p.lattice for p in parts]),
        torch.cat([p.space_group for p in parts]),
        {k: torch.cat([p.values[k] for p in parts]) for k in keys},
    )


# --- checkpoints ------------------------------------------------------------------------------
def save_gfn(
    path: Path, policy: Policy, spec: EnvSpec, reward: Reward, proxy_id: str, info: dict[str, Any]
) -> None:
    payload = {
        "format": FORMAT,
        "policy": policy.config.to_dict(),
        "state": cpu_state(policy),
        "env": spec.key(),
        "reward": reward.key(),
        "proxy": proxy_id,
        "info": info,
    }
    save_atomic(payload, path)


def read_gfn(path: Path) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Crystal-GFN checkpoint")
    return payload


def load_gfn(payload: dict[str, Any], device: str | torch.device = "cpu") -> Policy:
    policy = Policy(PolicyConfig(**payload["policy"]))
    policy.load_state_dict(payload["state"])
    return policy.to(device).eval()
