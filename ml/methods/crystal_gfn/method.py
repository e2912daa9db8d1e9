"""The ``crystal_gfn`` design method: a GFlowNet samples (space group, composition, lattice)
in proportion to a reward from the request's objectives (proxy formation energy / band gap,
exact density / HHI), then the Wyckoff generator of the conditional method realises each
sample as a crystal in exactly that space group (:mod:`.realise`).

The GFlowNet is trained for the request (``steps`` iterations of trajectory balance) unless a
pretrained one exists for exactly the same environment, reward and proxy (e.g. the paper's
configuration, :func:`.request_spec.paper_request`). All GFlowNet samples are drawn before
the first candidate is yielded, and realisation draws from explicit seeds, so the same
request, seed and weights give the same candidates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from ml.methods.base import (
    Candidate,
    DesignMethod,
    MethodContext,
    MethodEvent,
    MethodParams,
    Progress,
    RequestError,
)
from ml.methods.crystal_gfn.checkpoint import (
    find_proxy,
    load_pretrained,
    load_proxy_cached,
    pretrained,
    pretrained_files,
)
from ml.methods.crystal_gfn.chemistry import symbol
from ml.methods.crystal_gfn.env import CrystalEnv
from ml.methods.crystal_gfn.gfn import (
    GFNConfig,
    Samples,
    concat_samples,
    new_policy,
    sample,
    train,
)
from ml.methods.crystal_gfn.realise import plan_samples, realise
from ml.methods.crystal_gfn.request_spec import env_spec
from ml.methods.crystal_gfn.reward import Reward, terms_from_request
from ml.request import DesignRequest

__all__ = ["CrystalGFNMethod", "CrystalGFNParams"]

# GFlowNet samples drawn per requested candidate: a few find no Wyckoff assignment.
OVERSAMPLE = 1.25
SAMPLE_ROUNDS = 4


class CrystalGFNParams(MethodParams):
    steps: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="trajectory-balance iterations when no pretrained GFlowNet fits the "
        "request (0: sample the untrained policy)",
    )
    batch_size: int = Field(default=128, ge=2, le=4096, description="trajectories per iteration")
    lr: float = Field(default=1e-3, gt=0, le=0.1, description="learning rate of the policies")
    lr_log_z: float = Field(default=0.05, gt=0, le=1.0, description="learning rate of log Z")
    beta: float = Field(
        default=8.0,
        gt=0,
        le=100,
        description="inverse temperature of the reward exp(-beta E) per eV/atom (and per unit "
        "of each objective's scale); 8 as in the paper",
    )
    explore: float = Field(
        default=0.1, ge=0, lt=1, description="share of training steps taken uniformly at random"
    )
    replay_fraction: float = Field(
        default=0.25, ge=0, le=0.9, description="share of each batch replayed from the buffer"
    )
    hidden: int = Field(default=256, ge=8, le=2048, description="units per policy layer")
    layers: int = Field(default=3, ge=1, le=8, description="hidden layers per policy")
    mixtures: int = Field(default=5, ge=1, le=20, description="Betas per lattice mixture")
    max_elements: int = Field(default=5, ge=1, le=8, description="elements per composition")
    max_per_element: int = Field(
        default=16, ge=1, le=200, description="atoms per element in the primitive cell"
    )
    train_seconds: float = Field(
        default=120.0, gt=0, le=86_400, description="wall-clock cap of the GFlowNet training"
    )
    pretrained: Literal["auto", "never"] = Field(
        default="auto",
        description="auto: use a pretrained GFlowNet when one matches the request exactly",
    )
    lattice: Literal["gfn", "generator"] = Field(
        default="gfn",
        description="gfn: keep the GFlowNet's lattice and generate positions for it; "
        "generator: the Wyckoff generator also generates the lattice",
    )
    generator_steps: int = Field(
        default=100, ge=2, le=1000, description="Euler steps of the Wyckoff generator's flow"
    )
    template_options: int = Field(
        default=4,
        ge=1,
        le=100,
        description="samples of one (group, composition) share its Wyckoff assignments "
        "round-robin, one assignment per this many samples",
    )
    realise_batch: int = Field(default=256, ge=1, le=4096)


def _wyckoff(device: str):  # type: ignore[no-untyped-def]
    from ml.methods.conditional.method import _load_wyckoff

    return _load_wyckoff(device)


def _check_weights() -> None:
    from ml.methods.conditional.checkpoint import find_weights

    try:
        find_proxy()
    except FileNotFoundError as exc:
        raise RequestError("method", f"crystal_gfn is unavailable: {exc}") from exc
    try:
        find_weights("wyckoff")
    except FileNotFoundError as exc:
        raise RequestError(
            "method", f"crystal_gfn is unavailable (it realises crystals with it): {exc}"
        ) from exc


def _emit(event: MethodEvent) -> Iterator[MethodEvent]:
    """Yield one event with torch's global generator state kept across it: the runner may
    draw from it between events, and the GFlowNet's draws must not depend on that."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    yield event
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


class CrystalGFNMethod(DesignMethod):
    name: ClassVar[str] = "crystal_gfn"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = (
        "Crystal-GFN: a GFlowNet samples space group, charge-neutral composition fitting its "
        "Wyckoff positions and lattice in proportion to a reward from the objectives "
        "(position-free proxy of formation energy and band gap, exact density and HHI); the "
        "symmetry-aware Wyckoff generator places the atoms."
    )
    Params: ClassVar[type[MethodParams]] = CrystalGFNParams

    def validate(self, request: DesignRequest) -> CrystalGFNParams:
        params = CrystalGFNParams.model_validate(request.params)
        _check_weights()
        cons = request.constraints
        if cons.templates:
            raise RequestError("constraints.templates", "crystal_gfn does not use templates")
        for i, obj in enumerate(request.objectives):
            if obj.property == "band_gap" and obj.fidelity not in (None, "pbe"):
                raise RequestError(
                    f"objectives.{i}.fidelity", "the proxy predicts PBE band gaps only"
                )
        proxy, _, _ = load_proxy_cached(find_proxy(), "cpu")
        env_spec(request, params.max_elements, params.max_per_element, proxy.config)
        return params

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        try:
            path = find_proxy()
        except FileNotFoundError:
            out["models"] = {"proxy": None, "pretrained": []}
            return out
        _, info, _ = load_proxy_cached(path, "cpu")
        out["models"] = {
            "proxy": {"file": path.name, "test": info.get("test"), "data": info.get("data")},
            "pretrained": [p.name for p in pretrained_files()],
        }
        return out

    # --- run ------------------------------------------------------------------------------
    def run(
        self, request: DesignRequest, params: MethodParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        assert isinstance(params, CrystalGFNParams)
        device = ctx.device
        yield Progress("load", 0, 1)
        proxy, _, proxy_id = load_proxy_cached(find_proxy(), str(device))
        wyckoff, stats, _ = _wyckoff(str(device))
        spec = env_spec(request, params.max_elements, params.max_per_element, proxy.config)
        env = CrystalEnv(spec, device)
        terms, ignored = terms_from_request(request)
        reward = Reward(terms, proxy, params.beta)
        found = (
            pretrained(spec.key(), reward.key(), proxy_id) if params.pretrained == "auto" else None
        )
        torch.manual_seed(request.seed)
        gfn_info: dict[str, Any]
        if found is not None:
            policy, info = load_pretrained(found, str(device))
            gfn_info = {"source": f"pretrained:{found.name}", **_brief(info)}
        else:
            policy = new_policy(env, params.hidden, params.layers, params.mixtures)
            cfg = GFNConfig(
                steps=params.steps,
                batch_size=params.batch_size,
                lr=params.lr,
                lr_log_z=params.lr_log_z,
                explore=params.explore,
                replay_fraction=params.replay_fraction,
                max_seconds=params.train_seconds,
            )
            start, last = time.time(), 0
            yield from _emit(Progress("train", 0, params.steps))
            if params.steps:
                every = max(1, params.steps // 20)
                for st in train(env, policy, reward, cfg, every, ctx.should_cancel):
                    yield from _emit(Progress("train", st.step, params.steps, best=st.best_log_r))
                    last = st.step
                ctx.check_cancelled()
            policy.eval()
            gfn_info = {
                "source": "trained",
                "steps": last,
                "train_s": round(time.time() - start, 1),
            }
        yield from _emit(Progress("sample", 0, 1))
        drawn, conditions, dead = self._draw(env, policy, reward, stats, request, params, ctx)
        yield Progress("sample", 1, 1)
        extra = {"gfn": gfn_info, "ignored": ignored, "terms": terms, "dead": dead}
        yield from self._realise(env, wyckoff, drawn, conditions, request, params, ctx, extra)

    def _draw(
        self,
        env: CrystalEnv,
        policy: Any,
        reward: Reward,
        stats: Any,
        request: DesignRequest,
        params: CrystalGFNParams,
        ctx: MethodContext,
    ) -> tuple[Samples, list[Any], int]:
        """GFlowNet samples with a Wyckoff assignment, num_candidates of them (fewer only when
        the policy keeps proposing compositions nothing fits), their conditions, and the
        number of dead trajectories drawn."""
        n = request.num_candidates
        kept: list[Samples] = []
        conditions: list[Any] = []
        dead_total = 0
        for _ in range(SAMPLE_ROUNDS):
            ctx.check_cancelled()
            want = n - len(conditions)
            if want <= 0:
                break
            drawn, dead = sample(env, policy, reward, math.ceil(want * OVERSAMPLE) + 4)
            dead_total += dead
            if drawn is None:
                continue
            numbers = [_numbers(env, row) for row in drawn.states.counts.cpu().numpy()]
            conds = plan_samples(
                drawn.space_group.tolist(), numbers, stats, params.template_options
            )
            ok = [i for i, c in enumerate(conds) if c is not None][:want]
            if ok:
                kept.append(drawn.select(torch.tensor(ok, device=drawn.log_r.device)))
                conditions += [conds[i] for i in ok]
        if not conditions:
            raise RequestError(
                "constraints",
                f"the GFlowNet found no crystal meeting the constraints ({dead_total} "
                "trajectories ended without a valid composition, the others without a Wyckoff "
                "assignment); more training steps may find some",
            )
        return concat_samples(kept), conditions, dead_total

    def _realise(
        self,
        env: CrystalEnv,
        wyckoff: Any,
        drawn: Samples,
        conditions: list[Any],
        request: DesignRequest,
        params: CrystalGFNParams,
        ctx: MethodContext,
        extra: dict[str, Any],
    ) -> Iterator[MethodEvent]:
        lattices = drawn.lattice.double().cpu().numpy()
        values = {k: v.cpu().numpy() for k, v in drawn.values.items()}
        log_r = drawn.log_r.cpu().numpy()
        counts = drawn.states.counts.cpu().numpy()
        formulas = env.formulas(drawn.states.counts)
        terms = [
            {"property": t.property, "goal": t.goal, "value": t.value, "weight": t.weight}
            | ({"surrogate_for": t.surrogate_for} if t.surrogate_for else {})
            for t in extra["terms"]
        ]
        total = math.ceil(len(conditions) / params.realise_batch)
        yield Progress("generate", 0, total)
        for k in range(total):
            ctx.check_cancelled()
            lo, hi = k * params.realise_batch, (k + 1) * params.realise_batch
            pairs = realise(
                wyckoff,
                conditions[lo:hi],
                lattices[lo:hi],
                params.lattice,
                params.generator_steps,
                request.seed + k,
                params.realise_batch,
            )
            out = []
            for j, (wyck, crystal) in enumerate(pairs):
                i = lo + j
                proxy = {p: _num(values[p][i]) for p in ("formation_energy", "band_gap")}
                out.append(
                    Candidate(
                        crystal=crystal,
                        predicted={p: v for p, v in proxy.items() if v is not None},
                        method_score=float(log_r[i]),
                        meta={
                            "proxy": proxy,
                            "exact_from_gfn_lattice": {
                                p: _num(values[p][i]) for p in ("density", "hhi")
                            },
                            "log_reward": round(float(log_r[i]), 4),
                            "reward_terms": terms,
                            "objectives_not_in_reward": extra["ignored"],
                            "gfn_space_group": int(drawn.space_group[i]),
                            "gfn_composition": formulas[i],
                            "gfn_atoms": int(counts[i].sum()),
                            "gfn_lattice": [round(float(x), 4) for x in lattices[i]],
                            "lattice_source": params.lattice,
                            "wyckoff": [f"{o.letter}:{symbol(o.number)}" for o in wyck.orbits],
                            "template_rank": conditions[i].template_rank,
                            "gfn": extra["gfn"],
                            "dead_trajectories": extra["dead"],
                        },
                    )
                )
            yield out
            yield Progress("generate", k + 1, total)


def _numbers(env: CrystalEnv, counts: np.ndarray) -> list[int]:
    return [env.spec.elements[d] for d in np.flatnonzero(counts) for _ in range(int(counts[d]))]


def _num(x: float) -> float | None:
    return None if x != x else round(float(x), 4)


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("steps", "train_s", "device") if k in info}


def weights_present() -> bool:
    """Both the proxy and the Wyckoff generator are installed."""
    try:
        _check_weights()
    except RequestError:
        return False
    return True
