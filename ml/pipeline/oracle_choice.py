"""Which oracle scores what for a request, the stability judge, and the process-wide warm-up."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

from ml.evaluation.novelty import get_reference_set
from ml.request import DesignRequest

_BASE_ORACLES = {
    "formation_energy": "chgnet-eform",
    "band_gap": "gap-chgnet-ft",
    "density": "density",
}
# Score keys holding band gaps: clipped at 0 (step 4 of the module docstring).
_GAP_KEYS = frozenset({"band_gap", "band_gap_pbe"})


def oracle_plan(request: DesignRequest, judge: str | None = None) -> dict[str, str]:
    """Score key -> oracle name for a request (see the module docstring). With ``judge`` (the
    stability oracle), formation energy defaults to the judge's model, from the same energies."""
    from ml.oracles.registry import EFORM_OF_ENERGY, default_oracle_name

    plan = dict(_BASE_ORACLES)
    gap_set = False
    for objective in request.objectives:
        prop = objective.property
        if prop == "energy_above_hull":
            continue  # computed from CHGNet energies and the hull, not a registry oracle
        if prop == "band_gap":
            if not gap_set:
                plan["band_gap"] = default_oracle_name("band_gap", objective.fidelity)
                gap_set = True
            continue
        plan.setdefault(prop, default_oracle_name(prop))
    if plan["band_gap"] != _BASE_ORACLES["band_gap"]:
        plan["band_gap_pbe"] = _BASE_ORACLES["band_gap"]
    if judge in EFORM_OF_ENERGY and "formation_energy" not in request.oracles:
        plan["formation_energy"] = EFORM_OF_ENERGY[judge]
    # Oracles the request names replace the defaults for their property.
    plan.update({k: v for k, v in request.oracles.items() if k != "energy_above_hull"})
    return plan


def stability_oracle(request: DesignRequest, device: str | None = None) -> str:
    """The energy oracle that relaxes the candidates and judges their energy above hull: the
    request's choice, else the default for ``device`` (SevenNet-l3i5 on a GPU, CHGNet on a
    CPU)."""
    from ml.oracles.registry import default_stability_oracle

    return request.oracles.get("energy_above_hull") or default_stability_oracle(device)


def relax_as_judged(
    crystals: list,
    request: DesignRequest,
    device: str | None,
    steps: int | None = None,
    max_batch: int | None = None,
) -> list:
    """Relax ``crystals`` together as a job with ``relax: true`` relaxes its candidates: with
    the stability judge's energy model, FIRE to fmax 0.1 eV/A, at most ``steps`` (the job's
    300 by default), at most ``max_batch`` at a time on the CPU-graph path (default: all).
    Returns ``ml.oracles.relax.RelaxResult``s (NaN energy: failed)."""
    from ml.oracles.registry import ENERGY_MODEL_OF
    from ml.oracles.relax import relax_crystals
    from ml.pipeline.scored import STABILITY_RELAX_FMAX, STABILITY_RELAX_STEPS

    return relax_crystals(
        crystals,
        fmax=STABILITY_RELAX_FMAX,
        steps=STABILITY_RELAX_STEPS if steps is None else steps,
        device=device,
        model=ENERGY_MODEL_OF[stability_oracle(request, device)],
        max_batch=max_batch or max(len(crystals), 1),
    )


@lru_cache(maxsize=4)
def _reference_hull(model: str) -> Any:
    from ml.evaluation.hull import ReferenceHull

    return ReferenceHull.load(model=model)


def warm_up(device: str | None = None, judge: str | None = None) -> dict[str, float]:
    """Load what every job's evaluation needs (default oracles, CHGNet energies, the reference
    hull and the novelty reference set) into this process's caches, and start the processes
    judging uniqueness and novelty of large batches; seconds per part.
    ``judge`` names the energy oracle when jobs will name one (``oracles.energy_above_hull``)
    instead of the device's default.

    Workers call it when they start, so their first job does not pay these loads."""
    import time

    from ml.oracles.registry import (
        EFORM_OF_ENERGY,
        ENERGY_MODEL_OF,
        default_stability_oracle,
        get_oracle,
    )

    judge = judge or default_stability_oracle(device)
    loads: dict[str, Callable[[], object]] = {
        name: partial(get_oracle, name, device)
        for name in (judge, EFORM_OF_ENERGY[judge], *_BASE_ORACLES.values())
    }
    model = ENERGY_MODEL_OF[judge]
    loads.update(
        hull=partial(_reference_hull, model),
        novelty=get_reference_set,
        first_calls=partial(_first_calls, device, judge, tuple(loads)),
        identity_pool=_start_identity_pool,
    )
    took: dict[str, float] = {}
    for part, load in loads.items():
        t0 = time.perf_counter()
        load()
        took[part] = round(time.perf_counter() - t0, 2)
    return took


def _start_identity_pool() -> int:
    from ml.pipeline.identity import start_identity_pool

    return start_identity_pool()


@lru_cache(maxsize=8)
def _first_calls(device: str | None, judge: str, oracles: tuple[str, ...]) -> None:
    """One prediction per oracle and a two-step relaxation with the judge, on a 2-atom crystal,
    once per process: the lazy imports and kernel set-up of the first call (on the H200 the
    first relaxation imported torch_geometric's collater and compiled its TorchScript inside a
    256-candidate job, 31 s of it under cProfile) are paid at warm-up, not by the first job."""
    import numpy as np

    from ml.crystal import Crystal
    from ml.oracles.chgnet_device import device_graphs_enabled, score_on_device
    from ml.oracles.device_relax import prepare_graphs
    from ml.oracles.registry import ENERGY_MODEL_OF, get_oracle
    from ml.oracles.relax import relax_crystals
    from ml.oracles.sevennet import SEVENNET_MODELS

    rocksalt = Crystal(
        lattice=np.array([[0.0, 2.82, 2.82], [2.82, 0.0, 2.82], [2.82, 2.82, 0.0]]),
        frac_coords=np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]),
        numbers=np.array([11, 17]),
    )
    for name in oracles:
        get_oracle(name, device).predict([rocksalt])
    if device is not None and device_graphs_enabled(device):  # the path jobs take on CUDA
        score_on_device([rocksalt], device)
    relax_crystals([rocksalt], steps=2, device=device, model=ENERGY_MODEL_OF[judge])
    if ENERGY_MODEL_OF[judge] in SEVENNET_MODELS and device is not None:
        # The CUDA graphs of large jobs' relaxation tails (a few seconds to capture).
        prepare_graphs(ENERGY_MODEL_OF[judge], device)


def _hull_version(hull: Any) -> str:
    return str(getattr(hull, "version", "reference hull ml/evaluation/data/reference_energies"))
