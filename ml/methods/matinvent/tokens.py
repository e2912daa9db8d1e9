"""The policy's language: a crystal template as a token sequence, and the grammar that keeps
every sampled sequence a legal Wyckoff template.

A sequence is ``BOS, space group, (Wyckoff position, element) x orbits, EOS``. The structure
generator (issue 13's Wyckoff flow) then places the free parameters and the lattice, so the
sampled template fixes the space group and the composition of the crystal.

The grammar (:class:`Grammar`) tracks, per sequence, the space group, the conventional atoms so
far, the orbits so far, the positions without free parameters already used (each at most once)
and the elements present; from that it gives the tokens allowed next: only the space group's
own positions, none whose multiplicity would take the primitive cell past ``max_atoms``, EOS
only after an orbit (and once the required elements are in), the request's elements and space
groups only. The same masks are applied when sampling and when scoring a sequence, so
likelihoods, the KL to the prior and the samples all live on the same legal set.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from pymatgen.core import Element

from ml.generative.wyckoff import _wyckoff_table, multiplicity, orbit_ops, wyckoff_index
from ml.symmetry import centring

__all__ = [
    "BOS",
    "EOS",
    "MAX_Z",
    "PAD",
    "VOCAB",
    "Grammar",
    "GrammarLimits",
    "decode",
    "encode",
    "orbit_order",
]

NUM_SG = 230
NUM_WY = 1731
MAX_Z = 94  # elements the oracles know (H-Pu)
PAD, BOS, EOS = 0, 1, 2
SG0 = 3  # token of space group 1
WY0 = SG0 + NUM_SG  # token of global Wyckoff index 0
EL0 = WY0 + NUM_WY  # token of element Z = 1
VOCAB = EL0 + MAX_Z
# Phases of a sequence: what the next token is.
EXPECT_SG, EXPECT_POS, EXPECT_EL, DONE = 0, 1, 2, 3
NUM_FEATURES = 6  # phase one-hot (4), cell filled, orbits used


@cache
def _tables() -> dict[str, np.ndarray]:
    """Per global Wyckoff index: space group, conventional multiplicity, no free parameter;
    per space group (index = number): centring and which positions are its own."""
    table = _wyckoff_table()
    assert len(table) == NUM_WY
    sg = np.array([g for g, _ in table], dtype=np.int64)
    mult = np.array([multiplicity(g, x) for g, x in table], dtype=np.int64)
    fixed = np.array([not orbit_ops(g, x)[2].any() for g, x in table], dtype=bool)
    cent = np.zeros(NUM_SG + 1, dtype=np.int64)
    cent[1:] = [centring(g) for g in range(1, NUM_SG + 1)]
    positions = np.arange(NUM_SG + 1)[:, None] == sg[None, :]
    return {"sg": sg, "mult": mult, "fixed": fixed, "centring": cent, "positions": positions}


@cache
def _electronegativity(z: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for the noble gases' missing value
        x = Element.from_Z(z).X
    return 4.5 if x != x else float(x)  # noble gases: no value, last


def orbit_order(space_group: int, orbits: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The canonical order of a template's orbits: cations before anions (electronegativity),
    then atomic number, then Wyckoff letter order; one order, so each template has one
    sequence and the policy learns a consistent way to write it."""
    return sorted(
        orbits, key=lambda o: (_electronegativity(o[1]), o[1], wyckoff_index(space_group, o[0]))
    )


def encode(space_group: int, orbits: Sequence[tuple[str, int]]) -> list[int]:
    """Token sequence (BOS ... EOS) of a template, orbits in canonical order."""
    out = [BOS, SG0 + space_group - 1]
    for letter, z in orbit_order(space_group, orbits):
        if not 1 <= z <= MAX_Z:
            raise ValueError(f"element Z={z} is outside the policy's vocabulary (1-{MAX_Z})")
        out += [WY0 + wyckoff_index(space_group, letter), EL0 + z - 1]
    return [*out, EOS]


def decode(tokens: Sequence[int]) -> tuple[int, tuple[tuple[str, int], ...]] | None:
    """(space group, orbits) of a finished sequence; None when it is not a whole template."""
    from ml.generative.wyckoff import wyckoff_letter

    toks = [int(t) for t in tokens if int(t) != PAD]
    if len(toks) < 5 or toks[0] != BOS or toks[-1] != EOS:
        return None
    if not SG0 <= toks[1] < WY0:
        return None
    sg = toks[1] - SG0 + 1
    body = toks[2:-1]
    if len(body) % 2:
        return None
    orbits = []
    for w, e in zip(body[::2], body[1::2], strict=True):
        if not (WY0 <= w < EL0 and EL0 <= e < VOCAB):
            return None
        g, letter = wyckoff_letter(w - WY0)
        if g != sg:
            return None
        orbits.append((letter, e - EL0 + 1))
    return sg, tuple(orbits)


@dataclass(frozen=True)
class GrammarLimits:
    """What a request allows: primitive atoms, orbits, elements (atomic numbers; None = all
    1-94), space groups (None = all), elements every template must hold."""

    max_atoms: int = 20
    max_orbits: int = 20
    elements: frozenset[int] | None = None
    space_groups: frozenset[int] | None = None
    required: frozenset[int] = frozenset()


class Grammar:
    """Batched state of ``n`` sequences being written; :meth:`allowed` then :meth:`push`."""

    def __init__(self, n: int, limits: GrammarLimits, device: torch.device | str = "cpu"):
        t = _tables()
        self.limits = limits
        self.device = torch.device(device)
        dev = self.device
        self.wy_sg = torch.as_tensor(t["sg"], device=dev)
        self.wy_mult = torch.as_tensor(t["mult"], device=dev)
        self.wy_fixed = torch.as_tensor(t["fixed"], device=dev)
        self.centring = torch.as_tensor(t["centring"], device=dev)
        # (231, NUM_WY): the positions of each space group (row 0: none).
        self.sg_positions = torch.as_tensor(t["positions"], device=dev)
        el = torch.zeros(MAX_Z, dtype=torch.bool, device=dev)
        el[[z - 1 for z in (limits.elements or range(1, MAX_Z + 1))]] = True
        self.el_allowed = el
        sg = torch.zeros(NUM_SG, dtype=torch.bool, device=dev)
        sg[[g - 1 for g in (limits.space_groups or range(1, NUM_SG + 1))]] = True
        self.sg_allowed = sg
        req = torch.zeros(MAX_Z + 1, dtype=torch.bool, device=dev)
        req[list(limits.required)] = True
        self.required = req
        self.phase = torch.full((n,), EXPECT_SG, dtype=torch.long, device=dev)
        self.sg = torch.zeros(n, dtype=torch.long, device=dev)
        self.atoms = torch.zeros(n, dtype=torch.long, device=dev)
        self.cap = torch.ones(n, dtype=torch.long, device=dev)
        self.orbits = torch.zeros(n, dtype=torch.long, device=dev)
        # Positions without free parameters already taken (each holds one orbit at most).
        self.used = torch.zeros(n, NUM_WY, dtype=torch.bool, device=dev)
        self.present = torch.zeros(n, MAX_Z + 1, dtype=torch.bool, device=dev)

    @property
    def done(self) -> torch.Tensor:
        return self.phase == DONE

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(space group so far (n,), 0 = none; features (n, NUM_FEATURES)) of the state."""
        onehot = torch.nn.functional.one_hot(self.phase, 4).float()
        fill = (self.atoms.float() / self.cap.float()).unsqueeze(1)
        used = (self.orbits.float() / self.limits.max_orbits).unsqueeze(1)
        return self.sg, torch.cat([onehot, fill, used], dim=1)

    def allowed(self) -> torch.Tensor:
        """(n, VOCAB) bool: the tokens each sequence may take next (PAD only once done)."""
        n = self.phase.shape[0]
        mask = torch.zeros(n, VOCAB, dtype=torch.bool, device=self.device)
        mask[:, SG0:WY0] = (self.phase == EXPECT_SG).unsqueeze(1) & self.sg_allowed
        mask[:, EL0:VOCAB] = (self.phase == EXPECT_EL).unsqueeze(1) & self.el_allowed
        pos = self.phase == EXPECT_POS
        room = (self.cap - self.atoms).unsqueeze(1)
        full = self.orbits >= self.limits.max_orbits
        wy = self.sg_positions[self.sg] & ~self.used & (self.wy_mult.unsqueeze(0) <= room)
        wy &= (pos & ~full).unsqueeze(1)
        mask[:, WY0:EL0] = wy
        has_required = (self.present | ~self.required).all(dim=1)
        eos = pos & (self.orbits > 0) & (has_required | full)
        # A sequence with nowhere to go ends, whatever else is missing (the filter judges it).
        eos |= pos & ~wy.any(dim=1)
        mask[:, EOS] = eos
        mask[:, PAD] = self.done
        return mask

    def push(self, tokens: torch.Tensor) -> None:
        """Advance every sequence by its next token (assumed allowed)."""
        tokens = tokens.to(self.device)
        phase = self.phase
        is_sg = phase == EXPECT_SG
        g = (tokens - SG0 + 1).clamp(1, NUM_SG)
        self.sg = torch.where(is_sg, g, self.sg)
        self.cap = torch.where(is_sg, self.limits.max_atoms * self.centring[g], self.cap)
        is_pos = phase == EXPECT_POS
        is_eos = is_pos & (tokens == EOS)
        is_wy = is_pos & ~is_eos
        w = (tokens - WY0).clamp(0, NUM_WY - 1)
        self.atoms = self.atoms + torch.where(is_wy, self.wy_mult[w], 0)
        self.orbits = self.orbits + is_wy.long()
        rows = torch.nonzero(is_wy & self.wy_fixed[w]).squeeze(1)
        self.used[rows, w[rows]] = True
        is_el = phase == EXPECT_EL
        z = (tokens - EL0 + 1).clamp(1, MAX_Z)
        rows = torch.nonzero(is_el).squeeze(1)
        self.present[rows, z[rows]] = True
        new = phase.clone()
        new[is_sg] = EXPECT_POS
        new[is_wy] = EXPECT_EL
        new[is_eos] = DONE
        new[is_el] = EXPECT_POS
        self.phase = new


def replay(
    tokens: torch.Tensor, limits: GrammarLimits
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the grammar along padded sequences (B, L) that start with BOS. For every position
    t < L - 1 (the state after tokens[:t + 1], predicting tokens[t + 1]): allowed masks
    (B, L-1, VOCAB), space group (B, L-1) and features (B, L-1, NUM_FEATURES)."""
    b, length = tokens.shape
    grammar = Grammar(b, limits, tokens.device)
    masks, sgs, feats = [], [], []
    for t in range(length - 1):
        sg, f = grammar.features()
        masks.append(grammar.allowed())
        sgs.append(sg)
        feats.append(f)
        grammar.push(tokens[:, t + 1])
    return torch.stack(masks, 1), torch.stack(sgs, 1), torch.stack(feats, 1)


def pad(sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, L) tensor of sequences padded with PAD."""
    length = max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), PAD, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out.to(device)


def limits_for(
    max_atoms: int,
    max_orbits: int,
    allowed: Iterable[str] | None,
    excluded: Iterable[str] = (),
    required: Iterable[str] = (),
    space_groups: Iterable[int] | None = None,
) -> GrammarLimits:
    """Grammar limits from element symbols and space-group numbers."""
    ex = {Element(s).Z for s in excluded}
    if allowed is None:
        elements = frozenset(z for z in range(1, MAX_Z + 1) if z not in ex)
    else:
        elements = frozenset(Element(s).Z for s in allowed if Element(s).Z not in ex)
    return GrammarLimits(
        max_atoms=max_atoms,
        max_orbits=max_orbits,
        elements=elements,
        space_groups=frozenset(space_groups) if space_groups is not None else None,
        required=frozenset(Element(s).Z for s in required),
    )


def template_counts(space_group: int, orbits: Sequence[tuple[str, int]]) -> dict[int, int]:
    """Atoms per element (atomic number) of the primitive cell of a template."""
    counts: dict[int, int] = {}
    for letter, z in orbits:
        counts[z] = counts.get(z, 0) + multiplicity(space_group, letter)
    c = centring(space_group)
    return {z: n // c for z, n in counts.items()}


def template_formula(space_group: int, orbits: Sequence[tuple[str, int]]) -> str:
    """Reduced formula of a template (the diversity filter's key)."""
    from pymatgen.core import Composition

    counts = template_counts(space_group, orbits)
    return Composition({Element.from_Z(z).symbol: n for z, n in counts.items()}).reduced_formula
