"""Generate crystals for given conditions with a trained generator (batched, seeded)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ml.crystal import Crystal
from ml.methods.conditional.flow import SampleConfig, sample
from ml.methods.conditional.geometry import to_crystals
from ml.methods.conditional.model import NUM_SPACE_GROUPS, ConditionalFlowModel


@dataclass(frozen=True)
class GenerationCondition:
    """What one structure is generated for: its atoms (atomic numbers, order irrelevant) and
    optional space group and property targets (None = not given)."""

    numbers: tuple[int, ...]
    space_group: int | None = None
    formation_energy: float | None = None
    band_gap: float | None = None

    def __post_init__(self) -> None:
        if not self.numbers:
            raise ValueError("a condition needs at least one atom")
        if any(not 1 <= z <= 100 for z in self.numbers):
            raise ValueError(f"atomic numbers must be 1-100, got {self.numbers}")
        if self.space_group is not None and not 1 <= self.space_group <= NUM_SPACE_GROUPS:
            raise ValueError(f"space group must be 1-230, got {self.space_group}")

    def value(self, prop: str) -> float | None:
        return {"formation_energy": self.formation_energy, "band_gap": self.band_gap}.get(prop)


def _tensors(
    conditions: Sequence[GenerationCondition], properties: Sequence[str], device: str
) -> tuple[torch.Tensor, ...]:
    n = max(len(c.numbers) for c in conditions)
    types = np.zeros((len(conditions), n), dtype=np.int64)
    for i, c in enumerate(conditions):
        types[i, : len(c.numbers)] = c.numbers
    values = [[c.value(p) for p in properties] for c in conditions]
    given = torch.tensor([[v is not None for v in row] for row in values], device=device)
    props = torch.tensor(
        [[0.0 if v is None else v for v in row] for row in values], device=device
    ).float()
    spg = torch.tensor([c.space_group or 0 for c in conditions], device=device)
    t = torch.tensor(types, device=device)
    return t, t > 0, spg, props, given


def generate_batches(
    model: ConditionalFlowModel,
    conditions: Sequence[GenerationCondition],
    cfg: SampleConfig = SampleConfig(),
    seed: int = 0,
    batch_size: int = 512,
) -> Iterator[list[Crystal]]:
    """Crystals for ``conditions`` in order, ``batch_size`` at a time. Batch k draws its prior
    noise from ``seed + k``: same seed, conditions and weights give the same crystals."""
    device = next(model.parameters()).device
    use_amp = device.type == "cuda"
    for k, start in enumerate(range(0, len(conditions), batch_size)):
        chunk = conditions[start : start + batch_size]
        types, mask, spg, props, given = _tensors(chunk, model.config.properties, str(device))
        gen = torch.Generator(device=device).manual_seed(seed + k)
        lat, coords = sample(model, types, mask, spg, props, given, cfg, gen, autocast=use_amp)
        yield to_crystals(lat, coords, types, mask, model.config.length_prior)


def generate(
    model: ConditionalFlowModel,
    conditions: Sequence[GenerationCondition],
    cfg: SampleConfig = SampleConfig(),
    seed: int = 0,
    batch_size: int = 512,
) -> list[Crystal]:
    batches = generate_batches(model, conditions, cfg, seed, batch_size)
    return [crystal for batch in batches for crystal in batch]
