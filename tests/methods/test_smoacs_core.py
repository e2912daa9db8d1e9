"""SMOACS building blocks without model weights: neighbour lists, masks, neutrality,
templates, mutation layout, parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure
from pymatgen.optimization.neighbors import find_points_in_spheres

from ml.constraints import is_charge_neutral
from ml.crystal import Crystal
from ml.methods.smoacs.elements import ELEMENTS, element_index, oxidation_states
from ml.methods.smoacs.neighbors import build_neighbor_list, edge_lengths
from ml.methods.smoacs.params import SmoacsParams
from ml.methods.smoacs.population import Population
from ml.methods.smoacs.sources import build_tables, feasible_perovskite_patterns
from ml.methods.smoacs.templates import (
    NO_MASK,
    PEROVSKITE_PATTERNS,
    neutral_patterns,
    perovskite_template,
    template_from_crystal,
    tied,
    unmasked,
)
from ml.request import DesignRequest
from tests.structures import rutile_tio2


def _request(**constraints: object) -> DesignRequest:
    return DesignRequest(
        method="smoacs",
        objectives=[{"property": "formation_energy", "goal": "minimize"}],
        constraints=constraints,
    )


def _crystals() -> list[Crystal]:
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    tio2 = rutile_tio2()
    tri = Structure(
        Lattice.from_parameters(4.1, 5.3, 6.2, 70, 100, 115),
        ["Fe", "Fe", "O", "O", "O"],
        [[0.1, 0.2, 0.3], [0.6, 0.4, 0.9], [0.3, 0.8, 0.5], [0.9, 0.1, 0.6], [0.5, 0.5, 0.1]],
    )
    return [Crystal.from_structure(s) for s in (nacl, tio2, tri)]


def _ref_pairs(c: Crystal, cutoff: float) -> list[float]:
    src, dst, _, dist = find_points_in_spheres(
        c.cart_coords,
        c.cart_coords,
        r=cutoff,
        pbc=np.array([1, 1, 1], dtype=np.int64),
        lattice=c.lattice,
        tol=1e-8,
    )
    keep = (src != dst) | (dist > 1e-8)
    return sorted(np.round(dist[keep], 5).tolist())


def test_neighbor_list_matches_pymatgen_with_unwrapped_coordinates() -> None:
    crystals = _crystals()
    lat = torch.tensor(np.stack([c.lattice for c in crystals]), dtype=torch.float64)
    frac = np.concatenate([c.frac_coords for c in crystals])
    # Shift some atoms by whole cells: the list must account for it through its images.
    frac = frac + np.array([[1, -2, 0]] * len(frac)) * (np.arange(len(frac)) % 2)[:, None]
    frac_t = torch.tensor(frac, dtype=torch.float64)
    counts = torch.tensor([c.num_atoms for c in crystals])
    batch = torch.repeat_interleave(torch.arange(len(crystals)), counts)
    nl = build_neighbor_list(lat, frac_t, batch, counts, 6.0)
    d = edge_lengths(nl, frac_t, lat, batch)
    for i, c in enumerate(crystals):
        mine = sorted(np.round(d[batch[nl.src] == i].numpy(), 5).tolist())
        assert mine == pytest.approx(_ref_pairs(c, 6.0), abs=1e-4)


def test_edge_lengths_are_differentiable_in_lattice_and_coordinates() -> None:
    c = _crystals()[2]
    lat = torch.tensor(c.lattice[None], requires_grad=True)
    frac = torch.tensor(c.frac_coords, requires_grad=True)
    counts = torch.tensor([c.num_atoms])
    batch = torch.zeros(c.num_atoms, dtype=torch.long)
    nl = build_neighbor_list(lat, frac, batch, counts, 4.0)
    edge_lengths(nl, frac, lat, batch).sum().backward()
    assert lat.grad is not None and lat.grad.abs().sum() > 0
    assert frac.grad is not None and frac.grad.abs().sum() > 0


def test_oxidation_states_are_common_and_icsd() -> None:
    assert oxidation_states("O") == (-2,)
    assert oxidation_states("Na") == (1,)
    assert 3 in oxidation_states("Fe")
    assert oxidation_states("He") == ()


def test_neutral_patterns_enumerate_element_wise_assignments() -> None:
    ok = np.ones(13, dtype=bool)
    pats = neutral_patterns(["Fe", "Fe", "O", "O", "O"], ok, 8)
    assert (3, 3, -2, -2, -2) in pats
    assert all(sum(p) == 0 for p in pats)
    assert neutral_patterns(["Na", "Na"], ok, 8) == []


def test_perovskite_supercell_layout() -> None:
    t = perovskite_template([4.0, 4.0, 4.0], 3, 0.15, (2.0, 10.0), True)
    assert t.num_sites == 135
    assert t.num_groups == 27
    assert t.length_bounds == (6.0, 30.0)
    assert np.allclose(t.crystal.angles, 90.0)
    assert np.allclose(t.frac_bound, 0.05)
    for p in range(t.num_patterns):
        for g in range(27):
            assert t.ox[t.site_group == g, p].sum() == 0  # every cell neutral on its own
    assert set(PEROVSKITE_PATTERNS) == {(1, 2, -1), (1, 5, -2), (2, 4, -2), (3, 3, -2)}


def _population(
    request: DesignRequest, crystals: list[Crystal], masks: bool = True, tie: bool = False
) -> tuple[Population, object]:
    tables = build_tables(request, "cpu")
    ox_ok = tables.allowed[0, :-1].numpy().any(axis=1)
    temps = [template_from_crystal(c, ox_ok, 8, (2.0, 10.0), "test") for c in crystals]
    assert all(t is not None for t in temps)
    if not masks:
        temps = [unmasked(t) for t in temps]
    if tie:
        temps = [tied(t) for t in temps]
    pop = Population.from_templates(temps, torch.Generator().manual_seed(0), "cpu")
    return pop, tables


def _assert_exactly_neutral(pop: Population, elements: torch.Tensor) -> None:
    ox = pop.site_oxidation()
    for (lo, hi), n in zip(_spans(pop), pop.cand["num_sites"].tolist(), strict=True):
        assert hi - lo == n
        assert int(ox[lo:hi].sum()) == 0
        for k, o in zip(elements[lo:hi].tolist(), ox[lo:hi].tolist(), strict=True):
            assert o in oxidation_states(ELEMENTS[k])


def _spans(pop: Population) -> list[tuple[int, int]]:
    ends = torch.cumsum(pop.cand["num_sites"], 0).tolist()
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends, strict=True))


def test_masked_out_elements_never_win_even_with_the_largest_logit() -> None:
    request = _request(elements={"allowed": ["Li", "Na", "K", "Mg", "Al", "Ti", "O", "S", "F"]})
    pop, tables = _population(request, _crystals())
    # Make forbidden or oxidation-incompatible elements the most attractive by far.
    pop.site["logits"][:] = torch.rand(pop.site["logits"].shape)
    for sym in ("Cs", "Pb", "I", "Fe", "Cl"):
        pop.site["logits"][:, element_index(sym)] = 1e6
    soft = pop.soft_types(tables, 0.01)
    allowed = {"Li", "Na", "K", "Mg", "Al", "Ti", "O", "S", "F"}
    forbidden = [element_index(s) for s in ELEMENTS if s not in allowed]
    assert float(soft.types[:, forbidden].abs().max()) == 0.0
    elements, _ = pop.hard_types(tables)
    assert {ELEMENTS[k] for k in elements.tolist()} <= allowed
    _assert_exactly_neutral(pop, elements)
    for c in pop.to_crystals(elements):
        assert is_charge_neutral(c)
        assert set(c.species) <= allowed


def test_random_logits_give_neutral_crystals_under_any_pattern_weights() -> None:
    pop, tables = _population(_request(), _crystals() * 4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        pop.site["logits"] = torch.randn(pop.site["logits"].shape, generator=gen) * 3
        pop.group["pattern"] = torch.randn(pop.group["pattern"].shape, generator=gen) * 3
        elements, _ = pop.hard_types(tables)
        _assert_exactly_neutral(pop, elements)
        assert all(is_charge_neutral(c) for c in pop.to_crystals(elements))


def test_one_element_never_takes_both_signs() -> None:
    # S is allowed as S2- and S4+/S6+: the argmax would put S on every site.
    request = _request(elements={"allowed": ["S", "Na", "Mg", "Al", "O", "F"]})
    pop, tables = _population(request, _crystals())
    pop.site["logits"][:, element_index("S")] = 10.0
    elements, _ = pop.hard_types(tables)
    for c in pop.to_crystals(elements):
        assert is_charge_neutral(c), c


def test_unmasked_population_uses_every_permitted_element() -> None:
    request = _request(elements={"allowed": ["Na", "Cl", "Fe"]})
    pop, tables = _population(request, _crystals()[:1], masks=False)
    assert bool((pop.site["ox_idx"] == tables.allowed.shape[1] - 1).all())
    soft = pop.soft_types(tables, 1.0)
    used = set(torch.nonzero(soft.types[0] > 0).flatten().tolist())
    assert used == {element_index(s) for s in ("Na", "Cl", "Fe")}
    assert int(pop.site_oxidation()[0]) == NO_MASK


def test_take_copies_candidates_with_their_sites_and_groups() -> None:
    pop, _ = _population(_request(), _crystals())
    pop.site["logits"] = torch.arange(pop.site["logits"].numel(), dtype=torch.float32).view(
        pop.site["logits"].shape
    )
    new = pop.take(torch.tensor([2, 2, 0]))
    assert new.cand["num_sites"].tolist() == [5, 5, 2]
    spans = _spans(pop)
    lo, hi = spans[2]
    assert torch.equal(new.site["logits"][:5], pop.site["logits"][lo:hi])
    assert torch.equal(new.site["logits"][5:10], pop.site["logits"][lo:hi])
    assert new.site["site_group"].tolist() == [0] * 5 + [1] * 5 + [2] * 2
    assert torch.equal(new.group["pattern"][2], pop.group["pattern"][0])


def test_perovskite_masks_follow_site_roles() -> None:
    request = _request(crystal_family="perovskite", max_atoms=135)
    tables = build_tables(request, "cpu")
    assert feasible_perovskite_patterns(tables) == list(PEROVSKITE_PATTERNS)
    t = perovskite_template([4.0] * 3, 1, 0.15, (2.0, 10.0), True)
    pop = Population.from_templates([t], torch.Generator().manual_seed(0), "cpu")
    pop.site["logits"] = torch.randn(pop.site["logits"].shape)
    elements, _ = pop.hard_types(tables)
    ox = pop.site_oxidation().tolist()
    assert ox[0] in (1, 2, 3) and ox[1] in (2, 3, 4, 5) and all(o in (-1, -2) for o in ox[2:])
    assert is_charge_neutral(pop.to_crystals(elements)[0])


def test_params_reject_unknown_and_bad_values() -> None:
    assert SmoacsParams().steps == 200
    with pytest.raises(ValidationError):
        SmoacsParams.model_validate({"stepz": 3})
    with pytest.raises(ValidationError):
        SmoacsParams.model_validate({"mutation_at": [1.5]})
    with pytest.raises(ValidationError):
        SmoacsParams.model_validate({"length_bounds": [5.0, 2.0]})
    p = SmoacsParams(steps=200)
    assert p.mutation_steps() == (60, 90, 120, 150, 180)
    assert math.isclose(p.straight_through_start(), 40)


def _randomise(pop: Population, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pop.site["logits"] = torch.randn(pop.site["logits"].shape, generator=g) * 3
    pop.group["pattern"] = torch.randn(pop.group["pattern"].shape, generator=g) * 3


@pytest.mark.parametrize("masks", [True, False])
def test_tied_sites_of_one_template_element_end_with_one_element(masks: bool) -> None:
    allowed = ["Li", "Na", "Mg", "Ca", "Ti", "Fe", "Zn", "Al", "O", "S", "F", "Cl", "N"]
    request = _request(elements={"allowed": allowed})
    crystals = _crystals()
    pop, tables = _population(request, crystals, masks=masks, tie=True)
    for seed in range(20):
        _randomise(pop, seed)
        elements, _ = pop.hard_types(tables)
        for (lo, hi), c in zip(_spans(pop), crystals, strict=True):
            got = [ELEMENTS[k] for k in elements[lo:hi].tolist()]
            assert set(got) <= set(allowed)
            for sym in set(c.species):
                assert len({e for e, s in zip(got, c.species, strict=True) if s == sym}) == 1
            assert len(set(got)) <= len(set(c.species))
        if masks:
            _assert_exactly_neutral(pop, elements)
            ox = pop.site_oxidation()
            for (lo, hi), c in zip(_spans(pop), crystals, strict=True):
                site_ox = ox[lo:hi].tolist()
                for sym in set(c.species):
                    pairs = zip(site_ox, c.species, strict=True)
                    assert len({o for o, s in pairs if s == sym}) == 1


def test_untied_sites_may_differ_and_tied_gradients_reach_one_row() -> None:
    request = _request()
    crystals = _crystals()
    pop, tables = _population(request, crystals)
    _randomise(pop, 1)
    elements, _ = pop.hard_types(tables)
    lo, hi = _spans(pop)[1]  # TiO2: two Ti, four O sites
    assert len({ELEMENTS[k] for k in elements[lo:hi].tolist()}) > 2  # per-site choice
    pop, tables = _population(request, crystals, tie=True)
    pop.site["logits"].requires_grad_(True)
    soft = pop.soft_types(tables, 0.5)
    (soft.types * torch.randn(soft.types.shape)).sum().backward()
    grad = pop.site["logits"].grad
    assert grad is not None
    learns = grad.abs().sum(-1) > 0
    assert torch.equal(learns, pop.site["tie"] == torch.arange(len(learns)))
    assert int(learns.sum()) == 2 + 2 + 2  # NaCl: Na, Cl; TiO2: Ti, O; Fe2O3-like: Fe, O


def test_tied_perovskite_supercell_is_one_abx3_and_take_keeps_ties() -> None:
    t = tied(perovskite_template([4.0, 4.0, 4.0], 2, 0.15, (2.0, 10.0), True))
    assert t.num_groups == 1 and len(set(np.asarray(t.tie).tolist())) == 3
    tables = build_tables(_request(crystal_family="perovskite"), "cpu")
    pop = Population.from_templates([t, t, t], torch.Generator().manual_seed(0), "cpu")
    _randomise(pop, 2)
    pop = pop.take(torch.tensor([2, 0]))
    elements, _ = pop.hard_types(tables)
    ox = pop.site_oxidation()
    for lo, hi in _spans(pop):
        assert int(ox[lo:hi].sum()) == 0
        for role in (0, 1, 2):
            sel = torch.nonzero(pop.site["role"][lo:hi] == role).flatten() + lo
            assert len(set(elements[sel].tolist())) == 1
            assert len(set(ox[sel].tolist())) == 1


def test_geometry_follows_only_the_stability_term_when_split() -> None:
    """``geometry_loss: stability``: the property terms move the species, not the geometry
    (which the job's relaxation would undo); the stability term moves both."""
    from ml.methods.smoacs.engine import _split_grads

    leaves = {
        "length": torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True),
        "frac": torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True),
        "logits": torch.tensor([[0.5, -0.5]], requires_grad=True),
    }

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        objective = (leaves["length"].sum(1) * leaves["logits"][:, 0]) ** 2
        shape = (leaves["frac"] ** 2).sum(1) + leaves["logits"][:, 1] * leaves["length"][:, 0]
        return objective, shape

    grads = dict(zip(leaves, _split_grads(leaves, *losses(), torch.tensor([True])), strict=True))
    objective, shape = losses()
    g_shape = torch.autograd.grad(shape.sum(), list(leaves.values()), retain_graph=True)
    g_all = torch.autograd.grad((objective + shape).sum(), list(leaves.values()))
    assert torch.allclose(grads["length"], g_shape[0])
    assert torch.allclose(grads["frac"], g_shape[1])
    assert torch.allclose(grads["logits"], g_all[2])
    assert not torch.allclose(grads["length"], g_all[0])  # the objective would move it
    # A non-finite candidate gets no gradient.
    none = _split_grads(leaves, *losses(), torch.tensor([False]))
    assert all(g is not None and float(g.abs().max()) == 0.0 for g in none)
