"""Composition (+ space group, + property targets) -> crystals with the Wyckoff generator.

:func:`plan` turns a request into Wyckoff templates (space groups proposed from the
composition when none is given, assignments enumerated and ranked by
:mod:`ml.generative.assignment`); :func:`generate` samples them in GPU batches and expands
each sample to its crystal, whose space group is the template's by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ml.constraints import space_group_number
from ml.crystal import Crystal
from ml.generative.assignment import (
    TemplateStats,
    allocate,
    conventional_counts,
    enumerate_assignments,
)
from ml.generative.wyckoff import Orbit, WyckoffCrystal
from ml.methods.conditional.wyckoff_data import OrbitBatch, pad_templates
from ml.methods.conditional.wyckoff_flow import WyckoffSampleConfig, sample
from ml.methods.conditional.wyckoff_model import WyckoffFlowModel

__all__ = ["WyckoffCondition", "expand_samples", "generate", "generate_batches", "plan"]


@dataclass(frozen=True)
class WyckoffCondition:
    """One structure to generate: a space group, its orbits (Wyckoff letter, atomic number)
    and optional property targets (None = not given)."""

    space_group: int
    orbits: tuple[tuple[str, int], ...]
    formation_energy: float | None = None
    band_gap: float | None = None
    template_rank: int = 0  # rank of the assignment among those proposed (0 = likeliest)

    def value(self, prop: str) -> float | None:
        return {"formation_energy": self.formation_energy, "band_gap": self.band_gap}.get(prop)


def plan(
    numbers: Sequence[int],
    n: int,
    stats: TemplateStats,
    space_group: int | None = None,
    formation_energy: float | None = None,
    band_gap: float | None = None,
    space_group_options: int = 5,
    per_template: int = 4,
    used: int | None = None,
) -> list[WyckoffCondition]:
    """``n`` conditions for a primitive cell with atoms ``numbers``: in ``space_group``, or
    (None) in the likeliest groups for the composition; samples go round-robin over the top
    templates, ``per_template`` samples each (one sample: the likeliest group and assignment).
    Empty when nothing fits. ``used``: only the first ``used`` conditions will be used; they
    are the same as without it, and fewer assignments are checked."""
    from pymatgen.core import Element

    amounts: dict[str, int] = {}
    for z in numbers:
        sym = Element.from_Z(int(z)).symbol
        amounts[sym] = amounts.get(sym, 0) + 1
    if space_group is not None:
        groups = [space_group]
    else:
        proposed = stats.propose_space_groups(amounts, space_group_options, (1,))
        groups = [g for g, _ in proposed]
    options: list[tuple[int, list[tuple[str, int]]]] = []
    # allocate() uses the first ceil(n / per_template) options of the interleaved list, so no
    # group contributes more: checking further assignments' faithfulness is wasted.
    keep = max(1, min(math.ceil(n / per_template), used or n))
    per_group = [
        enumerate_assignments(g, conventional_counts(numbers, g), stats, keep=keep) for g in groups
    ]
    # Interleave: best template of each group by group likelihood, then the second best, ...
    for rank in range(max((len(a) for a in per_group), default=0)):
        for assignments in per_group:
            if rank < len(assignments):
                a = assignments[rank]
                options.append((a.space_group, a.orbits))
    if not options:
        return []
    return [
        WyckoffCondition(
            options[k][0], tuple(options[k][1]), formation_energy, band_gap, template_rank=k
        )
        for k in allocate(n, len(options), per_template)
    ]


def _props(conditions: Sequence[WyckoffCondition], properties: Sequence[str]) -> np.ndarray:
    return np.array(
        [[np.nan if (v := c.value(p)) is None else v for p in properties] for c in conditions],
        dtype=np.float64,
    ).reshape(len(conditions), len(properties))


# Redraws take their noise from seeds this far above the batch seeds (no overlap with them).
REDRAW_SEED_STRIDE = 1_000_003


def generate_batches(
    model: WyckoffFlowModel,
    conditions: Sequence[WyckoffCondition],
    cfg: WyckoffSampleConfig = WyckoffSampleConfig(),
    seed: int = 0,
    batch_size: int = 512,
    primitive: bool = True,
    redraw: int = 0,
) -> Iterator[list[tuple[WyckoffCrystal, Crystal]]]:
    """(Wyckoff representation, expanded crystal) for ``conditions`` in order, ``batch_size``
    at a time; batch k draws its noise from ``seed + k`` (same inputs, same crystals).

    ``redraw``: a sample whose spglib group (symprec 0.1) is not its template's is drawn
    again with fresh noise, up to ``redraw`` times (the last draw is kept when none fits).
    Expansion gives at least the template's symmetry, but free parameters that land on special
    values add more: ZnO in P6_3mc with Zn 2a, O 2b and dz = 1/4 is NiAs-type, P6_3/mmc."""
    for k, start in enumerate(range(0, len(conditions), batch_size)):
        chunk = conditions[start : start + batch_size]
        pairs = _draw(model, chunk, cfg, seed + k, primitive)
        for r in range(1, redraw + 1):
            off = [i for i, (_, c) in enumerate(pairs) if not _in_group(c, chunk[i].space_group)]
            if not off:
                break
            again = _draw(
                model, [chunk[i] for i in off], cfg, seed + k + r * REDRAW_SEED_STRIDE, primitive
            )
            for i, pair in zip(off, again, strict=True):
                pairs[i] = pair
        yield pairs


def _in_group(crystal: Crystal, space_group: int) -> bool:
    return space_group_number(crystal) == space_group


def _draw(
    model: WyckoffFlowModel,
    chunk: Sequence[WyckoffCondition],
    cfg: WyckoffSampleConfig,
    seed: int,
    primitive: bool,
) -> list[tuple[WyckoffCrystal, Crystal]]:
    device = next(model.parameters()).device
    batch = pad_templates(
        [c.space_group for c in chunk],
        [list(c.orbits) for c in chunk],
        props=_props(chunk, model.config.properties),
        norm=model.config.norm,
    ).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    u, lat = sample(model, batch, cfg, gen, autocast=device.type == "cuda")
    return expand_samples(
        [(c.space_group, c.orbits) for c in chunk], u, lat, batch, model, primitive
    )


def expand_samples(
    templates: Sequence[tuple[int, Sequence[tuple[str, int]]]],
    u: torch.Tensor,
    lat: torch.Tensor,
    batch: OrbitBatch,
    model: WyckoffFlowModel,
    primitive: bool = True,
) -> list[tuple[WyckoffCrystal, Crystal]]:
    """(Wyckoff representation, expanded crystal) of each sampled state (orbit parameters
    ``u``, lattice state ``lat``) of ``batch``, whose templates are (space group, orbits)."""
    physical = model.config.norm.decode(lat, batch.atoms).double().cpu().numpy()
    params = u.double().cpu().numpy()
    out = []
    for i, (space_group, orbits) in enumerate(templates):
        placed = [
            Orbit(letter, z, tuple(float(v) for v in params[i, j]))
            for j, (letter, z) in enumerate(orbits)
        ]
        w = WyckoffCrystal(space_group, physical[i], placed)
        out.append((w, w.to_crystal(primitive=primitive)))
    return out


def generate(
    model: WyckoffFlowModel,
    conditions: Sequence[WyckoffCondition],
    cfg: WyckoffSampleConfig = WyckoffSampleConfig(),
    seed: int = 0,
    batch_size: int = 512,
    primitive: bool = True,
    redraw: int = 0,
) -> list[Crystal]:
    """Expanded crystals only; ``primitive=False`` keeps the conventional cells (no spglib
    reduction: faster, and StructureMatcher reduces cells itself)."""
    batches = generate_batches(model, conditions, cfg, seed, batch_size, primitive, redraw)
    return [c for b in batches for _, c in b]
