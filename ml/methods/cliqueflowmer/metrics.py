"""Model checks shared by training and the benchmarks: encoding, predictor accuracy,
composition accuracy and encode -> decode reconstruction (StructureMatcher match ratio)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from ml.crystal import Crystal
from ml.methods.cliqueflowmer.decoding import (
    beam_search,
    decode_latents,
    tokens_to_numbers,
)
from ml.methods.cliqueflowmer.geometry import MaterialBatch, PackedMaterials
from ml.methods.cliqueflowmer.model import CliqueFlowmer

# The matching tolerances the evaluation uses everywhere (docs/evaluation.md).
MATCHER_KW = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA, nothing on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _chunks(n: int, size: int) -> Iterator[np.ndarray]:
    for lo in range(0, n, size):
        yield np.arange(lo, min(lo + size, n))


@torch.no_grad()
def encode_packed(
    model: CliqueFlowmer, packed: PackedMaterials, device: str | torch.device, batch: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-std of every packed material, (M, d_z) each, float32."""
    mus, stds = [], []
    for idx in _chunks(len(packed), batch):
        b = MaterialBatch.from_packed(packed, idx, device=device)
        with autocast(device):
            mu, log_std = model.encode(b)
        mus.append(mu.float())
        stds.append(log_std.float())
    return torch.cat(mus), torch.cat(stds)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def predictor_metrics(
    model: CliqueFlowmer, packed: PackedMaterials, y: np.ndarray, device: str | torch.device
) -> dict[str, float]:
    """MAE, RMSE and Spearman of f(mu_z) against labels (finite labels only)."""
    keep = np.isfinite(y)
    sub = packed.subset(np.flatnonzero(keep))
    mu, _ = encode_packed(model, sub, device)
    pred = model.predict(mu).cpu().numpy()
    err = pred - y[keep]
    return {
        "n": int(keep.sum()),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "spearman": spearman(pred, y[keep]),
        "label_std": float(y[keep].std()),
    }


@torch.no_grad()
def composition_accuracy(
    model: CliqueFlowmer, packed: PackedMaterials, device: str | torch.device, beam: int = 10
) -> float:
    """Fraction of materials whose beam-searched atom sequence equals the encoded one."""
    mu, _ = encode_packed(model, packed, device)
    hits = 0
    for idx in _chunks(len(packed), 512):
        with autocast(device):
            tokens, _ = beam_search(model, mu[idx], beam)
        numbers = tokens_to_numbers(tokens).cpu().numpy()
        for row, i in enumerate(idx):
            n = int(packed.num_atoms[i])
            got = numbers[row][numbers[row] > 0]
            hits += int(len(got) == n and np.array_equal(got, packed.numbers[i, :n]))
    return hits / max(len(packed), 1)


@torch.no_grad()
def reconstruct(
    model: CliqueFlowmer,
    packed: PackedMaterials,
    device: str | torch.device,
    guidance: float,
    steps: int = 100,
    beam: int = 10,
    seed: int = 0,
    anneal: float = 0.0,
    samples: int = 1,
    beams: int = 1,
) -> list[Crystal]:
    """Encode (posterior mean) then decode every packed material."""
    mu, _ = encode_packed(model, packed, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with autocast(device):
        return decode_latents(
            model,
            mu,
            beam_width=beam,
            steps=steps,
            guidance=guidance,
            generator=gen,
            anneal=anneal,
            samples=samples,
            beams=beams,
        )


def _match_pair(pair: tuple[Crystal, Crystal]) -> bool:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    a, b = pair
    sa, sb = a.to_structure(), b.to_structure()
    if sa.composition.reduced_formula != sb.composition.reduced_formula:
        return False
    try:
        return bool(StructureMatcher(**MATCHER_KW).fit(sa, sb))
    except Exception:  # degenerate decoded cells can break the matcher: not a match
        return False


def match_flags(
    originals: Sequence[Crystal], decoded: Sequence[Crystal], workers: int = 1
) -> list[bool]:
    """StructureMatcher (ltol 0.2, stol 0.3, angle_tol 5) original vs decoded, pairwise."""
    pairs = list(zip(originals, decoded, strict=True))
    if workers <= 1:
        return [_match_pair(p) for p in pairs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_match_pair, pairs, chunksize=8))
