"""The Crystal-GFN environment, batched: space group -> composition -> lattice.

States (one row per trajectory, :class:`States`):

* space group: crystal-lattice system, point symmetry and space group, each unset (0 / -1)
  or set. From the source any of the three may be set; each choice restricts the others to
  compatible values; setting the group sets the other two. (Paper, section 3.1.)
* composition: atoms per element of the vocabulary in the *primitive* cell. An action sets one
  unset element to k atoms, k among the counts the group's Wyckoff positions can hold for one
  element (:func:`~ml.methods.crystal_gfn.spacegroups.element_counts`), within ``max_atoms``,
  ``max_per_element`` and ``max_elements``. "Stop" is allowed only on a valid composition:
  charge neutral (when asked), joint Wyckoff fit, required elements present, the request's
  fixed composition / family. (Section 3.2.)
* lattice: one continuous action sets the free lattice parameters of the group's lattice
  system (ties and fixed angles imposed), in a box from the training data (section 3.3;
  :meth:`CrystalEnv.to_lattice`). The paper reaches the lattice by increments; one step from a
  mixture of Betas over the box is the same sample space with a shorter trajectory.

A composition state with no valid action (e.g. ``max_elements`` reached without neutrality)
ends the trajectory as *dead*: it is not a crystal, gets a tiny reward, and is never returned.

Discrete forward actions, one flat index: [8 systems | 5 point symmetries | |G| groups |
D x K (element, atoms) | stop]. Backward actions (which parent): [4 ways the group was set:
system and/or point symmetry set before it | unset system | unset point symmetry | remove
element d (D)]. Stop and the lattice step have a single parent (backward probability 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ml.generative.wyckoff import lattice_free_mask
from ml.methods.crystal_gfn.chemistry import is_neutral, symbol
from ml.methods.crystal_gfn.proxy import LatticeBox
from ml.methods.crystal_gfn.spacegroups import (
    CRYSTAL_LATTICE_SYSTEMS,
    POINT_SYMMETRIES,
    crystal_lattice_system,
    element_counts,
    point_symmetry,
    wyckoff_fit,
)
from ml.symmetry import centring

__all__ = ["CrystalEnv", "EnvSpec", "States"]

N_CLS = len(CRYSTAL_LATTICE_SYSTEMS)
N_PS = len(POINT_SYMMETRIES)
BACK_SG = 4  # backward: how the group was set (system set before?, point symmetry set before?)
BACK_UNSET_CLS = 4
BACK_UNSET_PS = 5
BACK_ELEMENTS = 6


@dataclass(frozen=True)
class EnvSpec:
    """What the request allows. ``composition``: a fixed reduced formula as (Z, amount)
    pairs; ``formula_units``: its allowed multiples (None: all within ``max_atoms``)."""

    elements: tuple[int, ...]
    space_groups: tuple[int, ...]
    max_atoms: int = 20
    max_per_element: int = 16
    max_elements: int = 5
    required: tuple[int, ...] = ()
    neutral: bool = True
    composition: tuple[tuple[int, int], ...] | None = None
    formula_units: tuple[int, ...] | None = None
    perovskite: bool = False
    box: LatticeBox = field(default_factory=LatticeBox)

    def __post_init__(self) -> None:
        if not self.elements:
            raise ValueError("no element to build compositions from")
        if not self.space_groups:
            raise ValueError("no space group allowed")

    def key(self) -> str:
        """Canonical JSON: a pretrained GFlowNet is reused only for the same environment."""
        d = asdict(self)
        d["box"] = {k: [round(x, 6) for x in v] for k, v in d["box"].items()}
        return json.dumps(d, sort_keys=True)

    @property
    def per_element(self) -> int:
        return max(1, min(self.max_per_element, self.max_atoms))


@dataclass
class States:
    cls: torch.Tensor  # (B,) 0 unset, 1..8
    ps: torch.Tensor  # (B,) 0 unset, 1..5
    gi: torch.Tensor  # (B,) index into the allowed groups, -1 unset
    counts: torch.Tensor  # (B, D) atoms per vocabulary element (primitive cell)
    done: torch.Tensor  # (B,) composition stopped: the lattice step is next
    dead: torch.Tensor  # (B,) no valid action: not a crystal

    def clone(self) -> States:
        return States(*(getattr(self, f).clone() for f in self.__dataclass_fields__))


class CrystalEnv:
    def __init__(self, spec: EnvSpec, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        groups = spec.space_groups
        self.n_groups = len(groups)
        self.D = len(spec.elements)
        self.K = spec.per_element
        dev = self.device
        self.groups = torch.tensor(groups, device=dev)
        self.cls_of = torch.tensor([crystal_lattice_system(g) for g in groups], device=dev)
        self.ps_of = torch.tensor([point_symmetry(g) for g in groups], device=dev)
        self.cls_onehot = torch.nn.functional.one_hot(self.cls_of, N_CLS).float()
        self.ps_onehot = torch.nn.functional.one_hot(self.ps_of, N_PS).float()
        self.centring = torch.tensor([centring(g) for g in groups], device=dev)
        self.z = torch.tensor(spec.elements, device=dev)
        self.free = torch.tensor(np.stack([lattice_free_mask(g) for g in groups]), device=dev)
        self.tie_b = torch.tensor([g >= 75 for g in groups], device=dev)
        self.tie_c = torch.tensor([g >= 195 for g in groups], device=dev)
        self.hexagonal = torch.tensor([143 <= g <= 194 for g in groups], device=dev)
        self.allowed = torch.tensor(self._allowed_counts(), device=dev)  # (G, D, K)
        self.n_sg_actions = N_CLS + N_PS + self.n_groups
        self.n_actions = self.n_sg_actions + self.D * self.K + 1
        self.stop_action = self.n_actions - 1
        self.n_back = BACK_ELEMENTS + self.D
        self.n_in = (N_CLS + 1) + (N_PS + 1) + (self.n_groups + 1) + 2 * self.D + 2 + 3
        self._stop_cache: dict[tuple[int, bytes], bool] = {}
        self._required = {spec.elements.index(z) for z in spec.required if z in spec.elements}

    # --- tables -------------------------------------------------------------------------
    def _fixed_counts(self) -> dict[int, set[int]] | None:
        """Per vocabulary element, the atom counts a fixed composition allows."""
        spec = self.spec
        if spec.composition is None:
            return None
        per_fu = sum(a for _, a in spec.composition)
        units = spec.formula_units or tuple(range(1, spec.max_atoms // per_fu + 1))
        amounts = dict(spec.composition)
        return {
            d: {u * amounts[z] for u in units if u * per_fu <= spec.max_atoms}
            for d, z in enumerate(spec.elements)
            if z in amounts
        }

    def _allowed_counts(self) -> np.ndarray:
        out = np.zeros((self.n_groups, self.D, self.K), dtype=bool)
        fixed = self._fixed_counts()
        for i, g in enumerate(self.spec.space_groups):
            ks = element_counts(g, self.K)
            for d in range(self.D):
                for k in ks:
                    if fixed is None or k in fixed.get(d, set()):
                        out[i, d, k - 1] = True
        return out

    # --- states -------------------------------------------------------------------------
    def initial(self, n: int) -> States:
        dev = self.device
        zeros = torch.zeros(n, dtype=torch.long, device=dev)
        return States(
            cls=zeros.clone(),
            ps=zeros.clone(),
            gi=torch.full((n,), -1, dtype=torch.long, device=dev),
            counts=torch.zeros(n, self.D, dtype=torch.long, device=dev),
            done=torch.zeros(n, dtype=torch.bool, device=dev),
            dead=torch.zeros(n, dtype=torch.bool, device=dev),
        )

    def encode(self, s: States) -> torch.Tensor:
        """(B, n_in) network input."""
        f = torch.nn.functional
        counts = s.counts.float()
        present = (s.counts > 0).float()
        sg_phase = s.gi < 0
        lattice_phase = s.done
        comp_phase = ~sg_phase & ~lattice_phase
        return torch.cat(
            [
                f.one_hot(s.cls, N_CLS + 1).float(),
                f.one_hot(s.ps, N_PS + 1).float(),
                f.one_hot(s.gi + 1, self.n_groups + 1).float(),
                counts / self.K,
                present,
                counts.sum(1, keepdim=True) / self.spec.max_atoms,
                present.sum(1, keepdim=True) / self.spec.max_elements,
                torch.stack([sg_phase, comp_phase, lattice_phase], 1).float(),
            ],
            dim=1,
        )

    def forward_mask(self, s: States) -> torch.Tensor:
        """(B, n_actions) valid forward actions (none for finished or dead rows)."""
        b = s.gi.shape[0]
        mask = torch.zeros(b, self.n_actions, dtype=torch.bool, device=self.device)
        sg_rows = (s.gi < 0) & ~s.dead
        if sg_rows.any():
            cls, ps = s.cls[:, None], s.ps[:, None]
            fits_cls = (cls == 0) | (self.cls_of[None] + 1 == cls)  # (B, G)
            fits_ps = (ps == 0) | (self.ps_of[None] + 1 == ps)
            cls_ok = (s.cls[:, None] == 0) & ((fits_ps.float() @ self.cls_onehot) > 0)
            ps_ok = (s.ps[:, None] == 0) & ((fits_cls.float() @ self.ps_onehot) > 0)
            sg_ok = fits_cls & fits_ps
            block = torch.cat([cls_ok, ps_ok, sg_ok], 1) & sg_rows[:, None]
            mask[:, : self.n_sg_actions] = block
        comp_rows = (s.gi >= 0) & ~s.done & ~s.dead
        if comp_rows.any():
            gi = s.gi.clamp(min=0)
            total = s.counts.sum(1)
            n_el = (s.counts > 0).sum(1)
            k = torch.arange(1, self.K + 1, device=self.device)
            add = (
                self.allowed[gi]  # (B, D, K)
                & (s.counts == 0)[:, :, None]
                & (total[:, None, None] + k[None, None, :] <= self.spec.max_atoms)
                & (n_el < self.spec.max_elements)[:, None, None]
                & comp_rows[:, None, None]
            )
            mask[:, self.n_sg_actions : self.stop_action] = add.reshape(b, -1)
            mask[:, self.stop_action] = self.stop_valid(s, comp_rows)
        return mask

    def stop_valid(self, s: States, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) whether each composition (of ``rows``, default all) is a valid end of the
        composition stage; memoised per (group, counts), the checks being Python."""
        out = np.zeros(s.gi.shape[0], dtype=bool)
        nonempty = (s.gi >= 0) & (s.counts.sum(1) > 0)
        if rows is not None:
            nonempty &= rows
        idx = torch.nonzero(nonempty).flatten().cpu().numpy()
        if len(idx):
            gi = s.gi.cpu().numpy()
            counts = s.counts.cpu().numpy()
            cache = self._stop_cache
            for r in idx:
                key = (int(gi[r]), counts[r].tobytes())
                ok = cache.get(key)
                if ok is None:
                    ok = cache[key] = self._valid(int(gi[r]), counts[r])
                out[r] = ok
        return torch.from_numpy(out).to(self.device)

    def _valid(self, gi: int, counts: np.ndarray) -> bool:
        spec = self.spec
        present = np.flatnonzero(counts)
        if not len(present) or not self._required <= set(present.tolist()):
            return False
        comp = tuple(sorted((spec.elements[d], int(counts[d])) for d in present))
        if spec.neutral and not is_neutral(comp):
            return False
        if spec.composition is not None and not _proportional(comp, spec.composition):
            return False
        if spec.perovskite:
            from ml.constraints import is_perovskite

            if not is_perovskite("".join(f"{symbol(z)}{n}" for z, n in comp)):
                return False
        return wyckoff_fit(spec.space_groups[gi], tuple(sorted(n for _, n in comp)))

    def backward_mask(self, s: States) -> torch.Tensor:
        """(B, n_back) valid backward actions (parents) of each state."""
        b = s.gi.shape[0]
        mask = torch.zeros(b, self.n_back, dtype=torch.bool, device=self.device)
        sg_rows = s.gi < 0
        mask[:, BACK_UNSET_CLS] = sg_rows & (s.cls > 0)
        mask[:, BACK_UNSET_PS] = sg_rows & (s.ps > 0)
        empty = (s.gi >= 0) & (s.counts.sum(1) == 0) & ~s.done
        mask[:, :BACK_SG] = empty[:, None]
        comp = (s.gi >= 0) & ~s.done
        mask[:, BACK_ELEMENTS:] = (s.counts > 0) & comp[:, None]
        return mask

    def step(
        self, s: States, actions: torch.Tensor, rows: torch.Tensor
    ) -> tuple[States, torch.Tensor]:
        """Apply ``actions`` (R,) to ``rows`` (R,) of ``s``: the new states and, per row, the
        backward action that undoes it (-1 for stop, whose parent is unique)."""
        s = s.clone()
        back = torch.full_like(actions, -1)
        a = actions
        is_cls = a < N_CLS
        is_ps = (a >= N_CLS) & (a < N_CLS + N_PS)
        is_sg = (a >= N_CLS + N_PS) & (a < self.n_sg_actions)
        is_add = (a >= self.n_sg_actions) & (a < self.stop_action)
        is_stop = a == self.stop_action
        cls, ps, gi = s.cls[rows], s.ps[rows], s.gi[rows]
        back = torch.where(is_cls, BACK_UNSET_CLS, back)
        back = torch.where(is_ps, BACK_UNSET_PS, back)
        back = torch.where(is_sg, (cls > 0).long() + 2 * (ps > 0).long(), back)
        j = (a - N_CLS - N_PS).clamp(0, self.n_groups - 1)
        new_cls = torch.where(is_cls, a + 1, torch.where(is_sg, self.cls_of[j] + 1, cls))
        new_ps = torch.where(is_ps, a - N_CLS + 1, torch.where(is_sg, self.ps_of[j] + 1, ps))
        s.cls[rows], s.ps[rows] = new_cls, new_ps
        s.gi[rows] = torch.where(is_sg, j, gi)
        add = (a - self.n_sg_actions).clamp(0, self.D * self.K - 1)
        d, k = add // self.K, add % self.K + 1
        add_rows = rows[is_add]
        s.counts[add_rows, d[is_add]] = k[is_add]
        back = torch.where(is_add, BACK_ELEMENTS + d, back)
        s.done[rows[is_stop]] = True
        return s, back

    # --- lattice ------------------------------------------------------------------------
    def free_mask(self, gi: torch.Tensor) -> torch.Tensor:
        """(B, 6) free lattice parameters of each row's group."""
        return self.free[gi]

    def to_lattice(self, gi: torch.Tensor, counts: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Conventional (a, b, c, alpha, beta, gamma) from unit-cube coordinates ``u`` (B, 6)
        mapped into the box: u_a -> size, u_b -> ratio b/a, u_c -> ratio c/a (log scale, per
        cube root of the atoms), free angles; tied lengths (ratio 0) and fixed angles of the
        lattice system imposed. Only the group's free coordinates matter."""
        box = self.spec.box
        n_conv = counts.sum(1).clamp(min=1) * self.centring[gi]

        def scale(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
            return bounds[0] + x * (bounds[1] - bounds[0])

        tie_b, tie_c = self.tie_b[gi], self.tie_c[gi]
        size = scale(u[:, 0], box.size)
        rb = torch.where(tie_b, torch.zeros_like(size), scale(u[:, 1], box.ratio_b))
        rc = torch.where(tie_c, torch.zeros_like(size), scale(u[:, 2], box.ratio_c))
        xa = size - (rb + rc) / 3.0
        x = torch.stack([xa, xa + rb, xa + rc], dim=1)
        lengths = torch.exp(x + torch.log(n_conv.float())[:, None] / 3.0)
        triclinic = self.groups[gi] <= 2
        angles = torch.where(
            triclinic[:, None], scale(u[:, 3:], box.triclinic_angle), torch.full_like(x, 90.0)
        )
        monoclinic = self.free[gi][:, 4] & ~triclinic
        beta = torch.where(monoclinic, scale(u[:, 4], box.monoclinic_beta), angles[:, 1])
        gamma = torch.where(self.hexagonal[gi], torch.full_like(beta, 120.0), angles[:, 2])
        return torch.cat([lengths, angles[:, :1], beta[:, None], gamma[:, None]], dim=1)

    # --- compositions -------------------------------------------------------------------
    def padded(self, counts: torch.Tensor, width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, count) padded to ``width`` elements (z = 0 pads), as the proxy takes them."""
        width = max(1, min(width, self.D))
        top, idx = torch.topk(counts, width, dim=1)
        z = torch.where(top > 0, self.z[idx], torch.zeros_like(idx))
        return z, top

    def formulas(self, counts: torch.Tensor) -> list[str]:
        out = []
        for row in counts.cpu().numpy():
            out.append(
                "".join(f"{symbol(self.spec.elements[d])}{row[d]}" for d in np.flatnonzero(row))
            )
        return out


def _proportional(comp: tuple[tuple[int, int], ...], formula: tuple[tuple[int, int], ...]) -> bool:
    """Whether ``comp`` is a whole multiple of the reduced ``formula`` (same elements)."""
    amounts = dict(formula)
    if {z for z, _ in comp} != set(amounts):
        return False
    ratios = {n / amounts[z] for z, n in comp}
    return len(ratios) == 1 and float(next(iter(ratios))).is_integer()
