"""Crystal geometry as the flow sees it: canonical cell, normalised lattice state and priors.

The flow moves three parts of a crystal from a prior sample to the data:

* lengths (a, b, c of the Niggli-reduced cell) in a normalised log space,
  ``u = (log L - log N^(1/3) - mu) / sigma``, so the atom-count-scaled log-normal prior
  ``L = N^(1/3) * exp(normal(mu, sigma))`` is a standard normal in ``u``;
* angles, ``(angle - 90) / 30``, so the uniform (60, 120) degree prior is uniform on (-1, 1);
* fractional coordinates: uniform on [0, 1) with periodic (wrapped) paths and
  minimum-image velocities, or, for the paper's comparison, a standard normal prior with
  straight (Euclidean) paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ml.crystal import Crystal, lattice_from_params_torch
from ml.generative.periodic import wrap

CoordPrior = Literal["uniform", "normal"]
COORD_PRIORS: tuple[CoordPrior, ...] = ("uniform", "normal")

ANGLE_CENTER = 90.0
ANGLE_HALF_RANGE = 30.0
# Generated angles are clipped here so a lattice matrix always exists.
ANGLE_CLIP = (35.0, 145.0)


def canonical(crystal: Crystal) -> Crystal:
    """Niggli-reduced cell with coordinates wrapped to [0, 1): the cell the model learns."""
    structure = crystal.to_structure().get_reduced_structure(reduction_algo="niggli")
    out = Crystal.from_structure(structure).wrapped()
    out.properties = dict(crystal.properties)
    return out


@dataclass(frozen=True)
class LengthPrior:
    """Per-axis mean and std of log(L / N^(1/3)) over the canonical training cells."""

    mu: tuple[float, float, float]
    sigma: tuple[float, float, float]

    @classmethod
    def fit(cls, lengths: np.ndarray, num_atoms: np.ndarray) -> LengthPrior:
        scaled = np.log(lengths) - np.log(num_atoms.astype(np.float64))[:, None] / 3.0
        mu = scaled.mean(axis=0)
        sigma = np.maximum(scaled.std(axis=0), 1e-3)
        return cls(
            (float(mu[0]), float(mu[1]), float(mu[2])),
            (float(sigma[0]), float(sigma[1]), float(sigma[2])),
        )

    def tensors(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor(self.mu, dtype=torch.float32, device=device),
            torch.tensor(self.sigma, dtype=torch.float32, device=device),
        )


def encode_lattice(
    lengths: torch.Tensor, angles: torch.Tensor, num_atoms: torch.Tensor, prior: LengthPrior
) -> torch.Tensor:
    """(B, 6) normalised lattice state from lengths (Å) and angles (degrees)."""
    mu, sigma = prior.tensors(lengths.device)
    log_scale = torch.log(num_atoms.to(lengths.dtype))[:, None] / 3.0
    u = (torch.log(lengths) - log_scale - mu) / sigma
    v = (angles - ANGLE_CENTER) / ANGLE_HALF_RANGE
    return torch.cat([u, v], dim=-1)


def decode_lattice(
    state: torch.Tensor, num_atoms: torch.Tensor, prior: LengthPrior
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths (Å) and angles (degrees) from the normalised lattice state (B, 6)."""
    mu, sigma = prior.tensors(state.device)
    log_scale = torch.log(num_atoms.to(state.dtype))[:, None] / 3.0
    # Clamp the normal variable so a stray sample cannot overflow exp.
    lengths = torch.exp(log_scale + mu + sigma * state[:, :3].clamp(-8.0, 8.0))
    angles = (ANGLE_CENTER + ANGLE_HALF_RANGE * state[:, 3:]).clamp(*ANGLE_CLIP)
    return lengths, angles


def sample_lattice_prior(
    batch: int, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """(B, 6) prior sample: standard normal log-lengths, uniform (-1, 1) angles."""
    u = torch.randn(batch, 3, generator=generator, device=device)
    v = torch.rand(batch, 3, generator=generator, device=device) * 2.0 - 1.0
    return torch.cat([u, v], dim=-1)


def sample_coord_prior(
    shape: tuple[int, ...],
    prior: CoordPrior,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> torch.Tensor:
    if prior == "uniform":
        return torch.rand(shape, generator=generator, device=device)
    if prior == "normal":
        return torch.randn(shape, generator=generator, device=device)
    raise ValueError(f"unknown coordinate prior {prior!r}")


def to_crystals(
    lattice_state: torch.Tensor,
    coords: torch.Tensor,
    numbers: torch.Tensor,
    mask: torch.Tensor,
    prior: LengthPrior,
) -> list[Crystal]:
    """Padded flow output (B, N, 3) to crystals, coordinates wrapped into [0, 1)."""
    num_atoms = mask.sum(dim=1)
    lengths, angles = decode_lattice(lattice_state.float(), num_atoms, prior)
    matrices = lattice_from_params_torch(lengths.double(), angles.double()).cpu().numpy()
    frac = wrap(coords.double()).cpu().numpy()
    nums = numbers.cpu().numpy()
    keep = mask.cpu().numpy()
    return [Crystal(matrices[i], frac[i][keep[i]], nums[i][keep[i]]) for i in range(len(matrices))]
