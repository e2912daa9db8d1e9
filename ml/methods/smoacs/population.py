"""The optimised variables of many candidates, packed for one batched forward pass.

Per candidate: lattice length factors (lengths = factor * the template's largest length) and
angles normalised to [0, 1] over 30-150 deg. Per site: fractional coordinates and element
logits A (S, K). Per neutrality group: oxidation-pattern logits w (G, P). Tied sites
(``tie_sites``) read the logit row of their tie's first site (``site["tie"]``, a global site
index), so only that row learns and the sites of a tie always share their element.

Element distribution (methods.md §3): for pattern p, the mask M_p keeps the elements whose
oxidation states contain the site's oxidation number under p (and that the request permits);
  D = sum_p softmax(w / T)_p * softmax((A masked by M_p) / T).
Masked-out entries are set to -inf before the softmax: the strict form of the paper's positive
floor (Appendix B.5), so a masked element has exactly zero weight whatever its logit.
The final structure takes the argmax pattern of each group and then the argmax element under
that pattern's mask, so the oxidation numbers of its sites sum to zero exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ml.crystal import Crystal, lattice_from_params, lattice_from_params_torch
from ml.methods.smoacs.elements import NUM_ELEMENTS, OX_MAX, OX_MIN, element_index
from ml.methods.smoacs.templates import NO_MASK, Template

__all__ = [
    "ANGLE_MAX",
    "ANGLE_MIN",
    "LEARNABLE",
    "Population",
    "SoftTypes",
    "TypeTables",
    "reused_templates",
]

ANGLE_MIN, ANGLE_MAX = 30.0, 150.0
_NO_MASK_ROW = OX_MAX - OX_MIN + 1
# Learnable tensors and the level (candidate, site, group) each lives on.
LEARNABLE = {
    "length": "cand",
    "angle": "cand",
    "frac": "site",
    "logits": "site",
    "pattern": "group",
}


@dataclass
class TypeTables:
    """Which element each (role, oxidation number) admits: (n_roles + 1, n_ox + 1, K) bool.

    Row ``role + 1`` (role -1 = none); the last oxidation row is the unmasked case (all
    permitted elements). Also the per-role radius tables for the tolerance factor.
    """

    allowed: torch.Tensor
    radii: torch.Tensor  # (n_roles + 1, n_ox + 1, K) float, 0 where unknown

    def masks(self, role: torch.Tensor, ox_idx: torch.Tensor) -> torch.Tensor:
        """(S, P, K) masks for sites with roles (S,) and oxidation rows (S, P)."""
        return self.allowed[(role + 1)[:, None], ox_idx]


@dataclass
class SoftTypes:
    """The element distribution of every site and its per-pattern parts."""

    types: torch.Tensor  # (S, K)
    per_pattern: torch.Tensor  # (S, P, K)
    pattern_probs: torch.Tensor  # (S, P), the site's group's pattern weights


def _ox_index(ox: torch.Tensor) -> torch.Tensor:
    return torch.where(ox == NO_MASK, torch.full_like(ox, _NO_MASK_ROW), ox - OX_MIN)


@dataclass
class Population:
    """Packed variables and static structure of B candidates (S sites, G groups, P patterns)."""

    cand: dict[str, torch.Tensor]
    site: dict[str, torch.Tensor]
    group: dict[str, torch.Tensor]
    meta: list[dict[str, object]] = field(default_factory=list)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_templates(
        cls,
        templates: Sequence[Template],
        generator: torch.Generator,
        device: str | torch.device,
        random_geometry: bool = False,
        logit_noise: float = 0.0,
    ) -> Population:
        """Initial variables: template geometry, or random geometry (the ablation): angles
        U(60, 120) deg, length ratios U(0.6, 1.4) scaled to U(10, 25) Å^3 per atom (a plausible
        density, so random cells are not absurdly dense), clipped to the bounds, coordinates
        U(0, 1); equal element and pattern logits (uniform distributions) plus
        ``logit_noise`` * U(0, 1)."""
        b = len(templates)
        p_max = max(t.num_patterns for t in templates)
        lengths = np.stack([t.crystal.lengths for t in templates])
        angles = np.stack([t.crystal.angles for t in templates])
        frac_t = [t.crystal.frac_coords for t in templates]
        if random_geometry:
            u = torch.rand((b, 7), generator=generator, dtype=torch.float64).numpy()
            lo = np.array([t.length_bounds[0] for t in templates])[:, None]
            hi = np.array([t.length_bounds[1] for t in templates])[:, None]
            fixed = np.array([t.angles_fixed for t in templates])[:, None]
            angles = np.where(fixed, angles, 60.0 + 60.0 * u[:, 3:6])
            ratios = 0.6 + 0.8 * u[:, :3]
            shapes = [lattice_from_params(r, a) for r, a in zip(ratios, angles, strict=True)]
            shape_volume = np.abs(np.linalg.det(np.stack(shapes)))
            n_sites = np.array([t.num_sites for t in templates], dtype=float)
            volume = n_sites * (10.0 + 15.0 * u[:, 6])
            lengths = np.clip(ratios * np.cbrt(volume / shape_volume)[:, None], lo, hi)
            frac_t = [
                torch.rand((t.num_sites, 3), generator=generator, dtype=torch.float64).numpy()
                for t in templates
            ]
        ref = lengths.max(axis=1)
        ox = np.concatenate([_pad_patterns(t.ox, p_max) for t in templates])
        valid = np.concatenate([_pad_valid(t.pattern_valid, p_max) for t in templates])
        group_offset = np.cumsum([0] + [t.num_groups for t in templates])[:-1]
        site_offset = np.cumsum([0] + [t.num_sites for t in templates])[:-1]
        tie = np.concatenate(
            [np.asarray(t.tie) + off for t, off in zip(templates, site_offset, strict=True)]
        )
        site_group = np.concatenate(
            [t.site_group + off for t, off in zip(templates, group_offset, strict=True)]
        )
        frac = np.concatenate(frac_t)
        s = len(frac)
        g = len(valid)

        def f32(x: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.asarray(x), dtype=torch.float32, device=device)

        def i64(x: np.ndarray) -> torch.Tensor:
            return torch.tensor(np.asarray(x), dtype=torch.long, device=device)

        cand = {
            "num_sites": i64([t.num_sites for t in templates]),
            "num_groups": i64([t.num_groups for t in templates]),
            "length_ref": f32(ref),
            "length": f32(lengths / ref[:, None]),
            "angle": f32((angles - ANGLE_MIN) / (ANGLE_MAX - ANGLE_MIN)),
            "length_lo": f32([t.length_bounds[0] for t in templates]),
            "length_hi": f32([t.length_bounds[1] for t in templates]),
            "angles_fixed": torch.tensor(
                [t.angles_fixed for t in templates], dtype=torch.bool, device=device
            ),
            "steps": torch.zeros(b, dtype=torch.float32, device=device),
        }
        site = {
            "frac": f32(frac),
            "frac_ref": f32(np.concatenate([t.crystal.frac_coords for t in templates])),
            "frac_bound": f32(np.concatenate([t.frac_bound for t in templates])),
            "logits": initial_logits((s, NUM_ELEMENTS), logit_noise, generator).to(device),
            "ox_idx": _ox_index(i64(ox)),
            "role": i64(np.concatenate([t.role for t in templates])),
            "site_group": i64(site_group),
            "tie": i64(tie),
        }
        group = {
            "pattern": initial_logits((g, p_max), logit_noise, generator).to(device),
            "pattern_valid": torch.tensor(valid, dtype=torch.bool, device=device),
        }
        meta = [{"source": t.source, **t.meta} for t in templates]
        pop = cls(cand, site, group, meta)
        pop.init_optimizer_state()
        return pop

    def init_optimizer_state(self) -> None:
        """Zero Adam moments for every learnable tensor (stored beside it, same layout), and
        an empty best-so-far snapshot (``best_<name>``, ``best_loss``)."""
        for name, level in LEARNABLE.items():
            store = self._level(level)
            store[f"{name}_m"] = torch.zeros_like(store[name])
            store[f"{name}_v"] = torch.zeros_like(store[name])
            store[f"best_{name}"] = store[name].detach().clone()
        self.cand["best_loss"] = torch.full_like(self.cand["length_ref"], math.inf)

    def level_mask(self, per_candidate: torch.Tensor, level: str) -> torch.Tensor:
        """A (B,) candidate mask broadcast to the rows of ``level`` (cand, site or group)."""
        if level == "cand":
            return per_candidate
        return per_candidate[self.site_batch if level == "site" else self.group_batch]

    @torch.no_grad()
    def record_best(self, loss: torch.Tensor) -> None:
        """Snapshot the variables of candidates whose (discrete) loss beats their best."""
        better = torch.isfinite(loss) & (loss < self.cand["best_loss"])
        self.cand["best_loss"] = torch.where(better, loss, self.cand["best_loss"])
        for name, level in LEARNABLE.items():
            store = self._level(level)
            mask = self.level_mask(better, level)[:, None]
            store[f"best_{name}"] = torch.where(mask, store[name].detach(), store[f"best_{name}"])

    @torch.no_grad()
    def restore_best(self) -> None:
        """Put every candidate that has a snapshot back to it."""
        has = torch.isfinite(self.cand["best_loss"])
        for name, level in LEARNABLE.items():
            store = self._level(level)
            mask = self.level_mask(has, level)[:, None]
            store[name] = torch.where(mask, store[f"best_{name}"], store[name].detach())

    # ---- layout ---------------------------------------------------------------------------
    def _level(self, level: str) -> dict[str, torch.Tensor]:
        return {"cand": self.cand, "site": self.site, "group": self.group}[level]

    @property
    def num_candidates(self) -> int:
        return int(self.cand["num_sites"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.site["frac"].device

    @property
    def site_batch(self) -> torch.Tensor:
        n = self.cand["num_sites"]
        return torch.repeat_interleave(torch.arange(len(n), device=n.device), n)

    @property
    def group_batch(self) -> torch.Tensor:
        n = self.cand["num_groups"]
        return torch.repeat_interleave(torch.arange(len(n), device=n.device), n)

    # ---- derived quantities ---------------------------------------------------------------
    def lengths(self) -> torch.Tensor:
        return self.cand["length"] * self.cand["length_ref"][:, None]

    def angles(self) -> torch.Tensor:
        return ANGLE_MIN + (ANGLE_MAX - ANGLE_MIN) * self.cand["angle"]

    def lattice(self) -> torch.Tensor:
        """(B, 3, 3) lattice matrices, differentiable in the length and angle variables."""
        return lattice_from_params_torch(self.lengths(), self.angles())

    def site_logits(self) -> torch.Tensor:
        """(S, K) element logits each site uses (its tie's row)."""
        return self.site["logits"][self.site["tie"]]

    def soft_types(self, tables: TypeTables, temperature: float) -> SoftTypes:
        masks = tables.masks(self.site["role"], self.site["ox_idx"])  # (S, P, K)
        logits = self.site_logits()[:, None, :].masked_fill(~masks, -math.inf)
        per_pattern = torch.softmax(logits / temperature, dim=-1)
        w = self.group["pattern"].masked_fill(~self.group["pattern_valid"], -math.inf)
        probs = torch.softmax(w / temperature, dim=-1)[self.site["site_group"]]
        types = (probs[..., None] * per_pattern).sum(1)
        return SoftTypes(types, per_pattern, probs)

    def chosen_patterns(self) -> torch.Tensor:
        """(S,) index of the argmax pattern of each site's group."""
        w = self.group["pattern"].masked_fill(~self.group["pattern_valid"], -math.inf)
        return w.argmax(-1)[self.site["site_group"]]

    def hard_types(self, tables: TypeTables, repair: bool = True) -> tuple[torch.Tensor, SoftTypes]:
        """Argmax elements (S,) (vocabulary indices) and their one-hot :class:`SoftTypes`.

        Elements come from the chosen pattern's mask only. With ``repair``, where one element
        would sit on sites of opposite oxidation sign (the project's neutrality check forbids
        that), the less confident site takes its best element of a compatible sign.
        """
        masks = tables.masks(self.site["role"], self.site["ox_idx"])
        chosen = self.chosen_patterns()
        s = len(chosen)
        ar = torch.arange(s, device=chosen.device)
        site_mask = masks[ar, chosen]  # (S, K)
        logits = self.site_logits().detach().masked_fill(~site_mask, -math.inf)
        ox_idx = self.site["ox_idx"][ar, chosen]
        if repair:
            elements = _sign_consistent_argmax(
                logits, ox_idx, self.cand["num_sites"], self.site_batch
            )
        else:
            elements = logits.argmax(-1)
        one_hot = torch.nn.functional.one_hot(elements, NUM_ELEMENTS).float()
        p = self.site["ox_idx"].shape[1]
        probs = torch.nn.functional.one_hot(chosen, p).float()
        per_pattern = probs[..., None] * one_hot[:, None, :]
        return elements, SoftTypes(one_hot, per_pattern, probs)

    def site_oxidation(self) -> torch.Tensor:
        """(S,) oxidation numbers of the chosen patterns (NO_MASK where unmasked)."""
        chosen = self.chosen_patterns()
        idx = self.site["ox_idx"][torch.arange(len(chosen), device=chosen.device), chosen]
        return torch.where(idx == _NO_MASK_ROW, torch.full_like(idx, NO_MASK), idx + OX_MIN)

    # ---- constraints ----------------------------------------------------------------------
    @torch.no_grad()
    def project(self) -> None:
        """Clip the variables into their boxes (lengths, angles, bounded coordinates)."""
        ref = self.cand["length_ref"][:, None]
        lo = self.cand["length_lo"][:, None] / ref
        hi = self.cand["length_hi"][:, None] / ref
        self.cand["length"].copy_(torch.maximum(torch.minimum(self.cand["length"], hi), lo))
        self.cand["angle"].clamp_(0.0, 1.0)
        bound = self.site["frac_bound"][:, None]
        ref_f = self.site["frac_ref"]
        frac = torch.maximum(torch.minimum(self.site["frac"], ref_f + bound), ref_f - bound)
        self.site["frac"].copy_(frac)

    # ---- mutation -------------------------------------------------------------------------
    def take(self, source: torch.Tensor) -> Population:
        """A population whose candidate b is a copy of this population's ``source[b]``."""
        source = source.to(self.cand["num_sites"].device)
        n_sites = self.cand["num_sites"]
        n_groups = self.cand["num_groups"]
        site_idx = _ranges(n_sites, source)
        group_idx = _ranges(n_groups, source)
        cand = {k: v[source].clone() for k, v in self.cand.items()}
        site = {k: v[site_idx].clone() for k, v in self.site.items()}
        group = {k: v[group_idx].clone() for k, v in self.group.items()}
        # Group indices of the copied sites point into the new group layout.
        old_first_group = torch.cumsum(n_groups, 0) - n_groups
        new_first_group = torch.cumsum(cand["num_groups"], 0) - cand["num_groups"]
        new_batch = torch.repeat_interleave(
            torch.arange(len(source), device=source.device), cand["num_sites"]
        )
        site["site_group"] = (
            site["site_group"] - old_first_group[source][new_batch] + new_first_group[new_batch]
        )
        old_first_site = torch.cumsum(n_sites, 0) - n_sites
        new_first_site = torch.cumsum(cand["num_sites"], 0) - cand["num_sites"]
        site["tie"] = site["tie"] - old_first_site[source][new_batch] + new_first_site[new_batch]
        meta = [dict(self.meta[int(i)]) for i in source.tolist()]
        return Population(cand, site, group, meta)

    # ---- diversity and relaxation ------------------------------------------------------------
    @torch.no_grad()
    def jitter(
        self,
        which: torch.Tensor,
        generator: torch.Generator,
        coords: float,
        lattice: float,
        logits: float,
    ) -> None:
        """Perturb the candidates in ``which`` (B,) bool: Gaussian noise of ``coords`` Å on the
        coordinates and relative ``lattice`` on the lengths, and ``logits`` * U(0, 1) on the
        element and pattern logits, so copies of one template start apart. Noise is drawn on
        the CPU for every candidate (device-independent and the same whichever are jittered)."""
        dev = self.device
        b, s, g = self.num_candidates, len(self.site["frac"]), len(self.group["pattern"])
        w = which.to(dev)
        ws, wg = w[self.site_batch], w[self.group_batch]
        ref = self.cand["length_ref"][self.site_batch][:, None]
        d_frac = torch.randn((s, 3), generator=generator).to(dev) * coords / ref
        d_len = torch.randn((b, 3), generator=generator).to(dev) * lattice
        d_log = torch.rand((s, self.site["logits"].shape[1]), generator=generator).to(dev)
        d_pat = torch.rand((g, self.group["pattern"].shape[1]), generator=generator).to(dev)
        self.site["frac"] = self.site["frac"] + d_frac * ws[:, None]
        self.cand["length"] = self.cand["length"] * (1.0 + d_len * w[:, None])
        self.site["logits"] = self.site["logits"] + logits * d_log * ws[:, None]
        self.group["pattern"] = self.group["pattern"] + logits * d_pat * wg[:, None]
        self.project()
        for name, level in LEARNABLE.items():
            store = self._level(level)
            store[f"best_{name}"] = store[name].detach().clone()

    @torch.no_grad()
    def set_geometry(self, crystals: Sequence[Crystal]) -> None:
        """Take the lattices and coordinates of ``crystals`` (same candidates and site order,
        e.g. relaxed), without clipping them into the optimisation boxes."""
        dev = self.device
        lengths = torch.tensor(np.stack([c.lengths for c in crystals]), dtype=torch.float32)
        angles = torch.tensor(np.stack([c.angles for c in crystals]), dtype=torch.float32)
        frac = np.concatenate([c.frac_coords for c in crystals])
        self.cand["length"] = lengths.to(dev) / self.cand["length_ref"][:, None]
        self.cand["angle"] = ((angles - ANGLE_MIN) / (ANGLE_MAX - ANGLE_MIN)).to(dev)
        self.site["frac"] = torch.tensor(frac, dtype=torch.float32, device=dev)

    # ---- output ---------------------------------------------------------------------------
    def to_crystals(self, elements: torch.Tensor) -> list[Crystal]:
        from ml.methods.smoacs.elements import ELEMENTS

        lat = self.lattice().detach().double().cpu().numpy()
        frac = self.site["frac"].detach().double().cpu().numpy()
        z = np.array([_Z[ELEMENTS[int(k)]] for k in elements.tolist()], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.cand["num_sites"].cpu().numpy())])
        return [
            Crystal(
                lat[i], frac[offsets[i] : offsets[i + 1]], z[offsets[i] : offsets[i + 1]]
            ).wrapped()
            for i in range(self.num_candidates)
        ]


def reused_templates(templates: Sequence[Template]) -> torch.Tensor:
    """(B,) bool: the template (geometry, species, source) already occurs earlier in the batch."""
    seen: set[bytes] = set()
    out = []
    for t in templates:
        c = t.crystal
        key = t.source.encode() + np.round(c.lattice, 6).tobytes()
        key += np.round(c.frac_coords, 6).tobytes() + np.asarray(c.numbers).tobytes()
        out.append(key in seen)
        seen.add(key)
    return torch.tensor(out, dtype=torch.bool)


def initial_logits(
    shape: tuple[int, ...], noise: float, generator: torch.Generator
) -> torch.Tensor:
    """Equal logits (a uniform distribution) plus ``noise`` * U(0, 1), drawn on the CPU so the
    start does not depend on the device."""
    return 0.5 + noise * torch.rand(shape, generator=generator)


def _build_z() -> dict[str, int]:
    from pymatgen.core import Element

    from ml.methods.smoacs.elements import ELEMENTS

    return {s: Element(s).Z for s in ELEMENTS}


_Z = _build_z()


def _ranges(counts: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Concatenated index ranges [first[s], first[s] + counts[s]) for s in ``source``."""
    first = torch.cumsum(counts, 0) - counts
    n = counts[source]
    start = torch.repeat_interleave(first[source], n)
    within = torch.arange(int(n.sum()), device=counts.device) - torch.repeat_interleave(
        torch.cumsum(n, 0) - n, n
    )
    return start + within


def _pad_patterns(ox: np.ndarray, p_max: int) -> np.ndarray:
    """Pad (N, P) to (N, p_max) by repeating pattern 0 (padded patterns are never chosen)."""
    if ox.shape[1] == p_max:
        return ox
    pad = np.repeat(ox[:, :1], p_max - ox.shape[1], axis=1)
    return np.concatenate([ox, pad], axis=1)


def _pad_valid(valid: np.ndarray, p_max: int) -> np.ndarray:
    if valid.shape[1] == p_max:
        return valid
    pad = np.zeros((valid.shape[0], p_max - valid.shape[1]), dtype=bool)
    return np.concatenate([valid, pad], axis=1)


def _sign_consistent_argmax(
    logits: torch.Tensor, ox_idx: torch.Tensor, num_sites: torch.Tensor, batch: torch.Tensor
) -> torch.Tensor:
    """Argmax element per site; an element keeps one oxidation sign within a candidate.

    In a crystal where the plain argmax puts one element on sites of both signs, sites are
    visited from the most to the least confident and a site whose best element is already used
    with the opposite sign takes its best compatible one (masks still hold, so neutrality is
    unchanged). Unmasked sites (no oxidation number) are unconstrained.
    """
    best = logits.argmax(-1)
    ox = ox_idx + OX_MIN
    sign = torch.where(ox_idx == _NO_MASK_ROW, torch.zeros_like(ox), torch.sign(ox))
    key = batch * NUM_ELEMENTS + best
    n_keys = len(num_sites) * NUM_ELEMENTS
    pos = torch.zeros(n_keys, device=logits.device).index_add_(0, key, (sign > 0).float())
    neg = torch.zeros(n_keys, device=logits.device).index_add_(0, key, (sign < 0).float())
    clash = ((pos > 0) & (neg > 0)).view(len(num_sites), NUM_ELEMENTS).any(-1)
    if not bool(clash.any()):
        return best
    out = best.clone()
    first = torch.cumsum(num_sites, 0) - num_sites
    for c in torch.nonzero(clash).flatten().tolist():
        lo = int(first[c])
        hi = lo + int(num_sites[c])
        lg = logits[lo:hi].cpu()
        sg = sign[lo:hi].cpu().tolist()
        used: dict[int, int] = {}
        for i in torch.argsort(-lg.max(-1).values, stable=True).tolist():
            if sg[i] == 0:
                continue
            for k in torch.argsort(-lg[i], stable=True).tolist():
                if not math.isfinite(float(lg[i, k])):
                    break
                if used.get(k, sg[i]) == sg[i]:
                    out[lo + i] = k
                    used[k] = sg[i]
                    break
    return out


def elements_of(symbols: Sequence[str]) -> torch.Tensor:
    """Vocabulary indices of element symbols (used by tests)."""
    return torch.tensor([element_index(s) for s in symbols], dtype=torch.long)
