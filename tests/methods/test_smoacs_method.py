"""The ``smoacs`` method end to end on tiny CPU runs (few candidates, few steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pymatgen.core import Composition, Lattice, Structure

from ml.constraints import is_charge_neutral
from ml.crystal import Crystal
from ml.methods.base import Cancelled, Candidate, MethodContext, Progress, RequestError
from ml.methods.registry import get_method
from ml.methods.smoacs.engine import SmoacsEngine
from ml.methods.smoacs.method import _engine_config, _load_predictors
from ml.methods.smoacs.objectives import terms_from_request
from ml.methods.smoacs.params import SmoacsParams
from ml.methods.smoacs.population import Population
from ml.methods.smoacs.sources import build_tables, build_templates
from ml.request import DesignRequest

pytestmark = pytest.mark.slow

ALLOWED = ["Li", "Na", "K", "Mg", "Ca", "Al", "Ga", "Si", "Zn", "O", "S", "F", "Cl"]
# refine_rounds 0: these tests are about the gradient stage (the refinement has its own).
TINY = {
    "steps": 8, "template_pool": 60, "progress_every": 4, "relax_steps": 3, "refine_rounds": 0,
}  # fmt: skip


def _request(**kw: object) -> DesignRequest:
    base: dict[str, object] = {
        "method": "smoacs",
        "objectives": [
            {"property": "band_gap", "goal": "target", "value": 2.0, "tolerance": 0.5},
            {"property": "formation_energy", "goal": "below", "value": -0.5},
        ],
        "constraints": {"elements": {"allowed": ALLOWED}},
        "num_candidates": 4,
        "seed": 3,
        "params": TINY,
    }
    base.update(kw)
    return DesignRequest.model_validate(base)


def _run(request: DesignRequest, ctx: MethodContext | None = None) -> tuple[list, list]:
    method = get_method("smoacs")
    params = method.validate(request)
    progress: list[Progress] = []
    cands: list[Candidate] = []
    for event in method.run(request, params, ctx or MethodContext()):
        if isinstance(event, Progress):
            progress.append(event)
        else:
            cands.extend(event)
    return progress, cands


@pytest.mark.parametrize("tie_sites", [True, False])
def test_candidates_are_neutral_and_use_only_allowed_elements(tie_sites: bool) -> None:
    progress, cands = _run(_request(params={**TINY, "tie_sites": tie_sites}))
    assert len(cands) == 4
    assert any(p.phase == "optimize" for p in progress)
    optimize = [p for p in progress if p.phase == "optimize"]
    assert optimize[-1].step == optimize[-1].total == 8
    if any(p.phase == "relax" for p in progress):  # the final relaxation reports completion
        assert progress[-1].phase == "relax" and progress[-1].step == progress[-1].total
    for c in cands:
        assert set(c.crystal.species) <= set(ALLOWED)
        assert is_charge_neutral(c.crystal), c.crystal.formula
        ox = c.meta["site_oxidation"]
        assert len(ox) == c.crystal.num_atoms and sum(ox) == 0
        assert {"band_gap", "formation_energy", "density"} <= set(c.predicted)
        expected = abs(c.predicted["band_gap"] - 2.0) + max(
            0.0, c.predicted["formation_energy"] + 0.6
        )
        assert c.method_score == pytest.approx(expected, abs=1e-4)
        if tie_sites:  # the template's stoichiometry pattern: at most its number of elements
            template = Composition(c.meta["template_formula"])
            assert len(set(c.crystal.species)) <= len(template.elements)


def test_same_seed_same_candidates() -> None:
    _, a = _run(_request(num_candidates=3))
    _, b = _run(_request(num_candidates=3))
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.crystal.numbers, y.crystal.numbers)
        # float32 reductions on several CPU threads are not bitwise repeatable (1e-7 seen).
        assert np.allclose(x.crystal.lattice, y.crystal.lattice, atol=1e-5)
        assert np.allclose(x.crystal.frac_coords, y.crystal.frac_coords, atol=1e-5)
        # That noise is why a resumed job recognises them by key, not content.
        assert x.key == y.key
    assert len({x.key for x in a}) == 3
    _, c = _run(_request(num_candidates=3, seed=4))
    assert not {x.key for x in a} & {z.key for z in c}
    assert any(
        not np.array_equal(x.crystal.numbers, z.crystal.numbers) for x, z in zip(a, c, strict=True)
    )


def test_one_objective_run_lowers_the_loss() -> None:
    request = DesignRequest(
        method="smoacs",
        objectives=[{"property": "formation_energy", "goal": "minimize"}],
        num_candidates=3,
        params={"steps": 25, "template_pool": 60, "keep_best": False, "mutation_at": []},
    )
    params = SmoacsParams.model_validate(request.params)
    tables = build_tables(request, "cpu")
    engine = SmoacsEngine(
        terms_from_request(request, params.threshold_margin, None),
        _load_predictors({"formation_energy"}, "cpu"),
        tables,
        _engine_config(params),
    )
    templates = build_templates(request, params, tables, 3, np.random.default_rng(0))

    def population() -> Population:
        return Population.from_templates(templates, torch.Generator().manual_seed(0), "cpu")

    before = engine.finalize(population()).loss
    pop = population()
    for event in engine.optimize(pop, torch.Generator().manual_seed(0)):
        if isinstance(event, Population):
            pop = event
    after = engine.finalize(pop).loss
    assert torch.isfinite(before).all() and torch.isfinite(after).all()
    assert float(after.mean()) < float(before.mean()) - 0.1


@pytest.mark.parametrize("geometry_loss", ["all", "stability"])
def test_with_geometry_loss_stability_the_gap_target_moves_species_not_geometry(
    geometry_loss: str,
) -> None:
    """A first step from the same start for gap targets 0.5 and 4 eV: with "stability" the
    cell and coordinates move alike (they follow CHGNet's energy surface, which the job's
    relaxation would return them to) and only the species feel the target; with "all" the
    gap bends the geometry too."""

    def one_step(target: float) -> Population:
        request = DesignRequest(
            method="smoacs",
            objectives=[
                {"property": "band_gap", "goal": "target", "value": target, "tolerance": 0.2}
            ],
            num_candidates=3,
            params={
                "steps": 1, "template_pool": 60, "mutation_at": [], "keep_best": False,
                "geometry_loss": geometry_loss,
            },
        )  # fmt: skip
        params = SmoacsParams.model_validate(request.params)
        tables = build_tables(request, "cpu")
        engine = SmoacsEngine(
            terms_from_request(request, params.threshold_margin, None),
            _load_predictors({"band_gap:pbe"}, "cpu", "chgnet"),
            tables,
            _engine_config(params),
        )
        templates = build_templates(request, params, tables, 3, np.random.default_rng(0))
        pop = Population.from_templates(templates, torch.Generator().manual_seed(0), "cpu")
        for event in engine.optimize(pop, torch.Generator().manual_seed(0)):
            if isinstance(event, Population):
                pop = event
        return pop

    low, high = one_step(0.5), one_step(4.0)
    same = [
        torch.equal(low.cand["length"], high.cand["length"]),
        torch.equal(low.site["frac"], high.site["frac"]),
    ]
    assert all(same) == (geometry_loss == "stability")
    assert not torch.equal(low.site["logits"], high.site["logits"])


def test_perovskite_mode_keeps_geometry_and_neutrality() -> None:
    request = _request(
        constraints={"crystal_family": "perovskite", "max_atoms": 40},
        num_candidates=2,
        params={**TINY, "supercell": 2, "relax_final": "off"},  # the designed geometry
    )
    _, cands = _run(request)
    for c in cands:
        assert c.crystal.num_atoms == 40
        assert np.allclose(c.crystal.angles, 90.0, atol=1e-6)
        assert is_charge_neutral(c.crystal)
        assert 0.3 < c.predicted["tolerance_factor"] < 2.0
        ox = np.array(c.meta["site_oxidation"]).reshape(8, 5)
        assert np.all(ox.sum(axis=1) == 0)  # every unit cell neutral
        assert np.all(ox[:, 0] > 0) and np.all(ox[:, 2:] < 0)
        # Tied by role (the default): one A, one B and one X element and oxidation number.
        species = np.array(c.crystal.species).reshape(8, 5)
        assert len(set(species[:, 0])) == len(set(species[:, 1])) == 1
        assert len(set(species[:, 2:].ravel())) == 1
        assert len(set(ox[:, 0])) == len(set(ox[:, 1])) == len(set(ox[:, 2:].ravel())) == 1


def test_user_template_cif() -> None:
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0] * 3, [0.5] * 3]
    )
    cif = Crystal.from_structure(nacl).to_cif()
    request = _request(
        constraints={"elements": {"allowed": ALLOWED}, "templates": [cif]}, num_candidates=2
    )
    _, cands = _run(request)
    for c in cands:
        assert c.crystal.num_atoms == 8
        assert c.meta["source"] == "user-0"
        assert is_charge_neutral(c.crystal)


def test_one_user_template_gives_distinct_designs() -> None:
    """Ten copies of one template are jittered apart (geometry and logits): >= 8 unique."""
    from ml.evaluation.uniqueness import unique_flags

    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0] * 3, [0.5] * 3]
    )
    request = _request(
        constraints={"templates": [Crystal.from_structure(nacl).to_cif()]},
        num_candidates=10,
        params={"steps": 3, "progress_every": 3, "relax_final": "off"},
    )
    _, cands = _run(request)
    assert len(cands) == 10
    assert sum(unique_flags([c.crystal for c in cands])) >= 8
    assert len({c.crystal.formula for c in cands}) >= 5


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"objectives": [{"property": "energy_above_hull", "goal": "minimize"}]}, "objectives.0"),
        ({"objectives": []}, "objectives"),
        ({"constraints": {"composition": "NaCl"}}, "constraints.composition"),
        ({"constraints": {"space_groups": [225]}}, "constraints.space_groups"),
        ({"constraints": {"elements": {"required": ["O"]}}}, "constraints.elements.required"),
        ({"constraints": {"elements": {"allowed": ["He", "Ne"]}}}, "constraints.elements"),
        ({"constraints": {"crystal_family": "perovskite"}, "params": {"supercell": 3}}, "params"),
        ({"params": {"template_source": "user"}}, "constraints.templates"),
        (
            {"objectives": [{"property": "tolerance_factor", "goal": "target", "value": 0.9}]},
            "objectives.0",
        ),
    ],
)
def test_bad_requests_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(RequestError) as err:
        get_method("smoacs").validate(_request(**changes))
    assert err.value.field.startswith(field)


def test_unknown_param_is_rejected() -> None:
    with pytest.raises(ValidationError):
        get_method("smoacs").validate(_request(params={"stepz": 5}))


def test_cancellation_between_steps() -> None:
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        _run(_request(), MethodContext(should_cancel=cancel))


def test_designs_are_relaxed_once_by_the_pipeline_when_the_job_relaxes() -> None:
    # relax: true -> the pipeline relaxes every candidate with the judge; SMOACS does not too.
    progress, cands = _run(_request(relax=True))
    assert not any(p.phase == "relax" for p in progress)
    assert all("relax" not in c.meta for c in cands)
    # relax: false -> SMOACS's own final CHGNet relaxation and re-scoring ("auto").
    progress, cands = _run(_request(relax=False))
    assert progress[-1].phase == "relax" and progress[-1].step == progress[-1].total
    assert all("relax" in c.meta and "designed" in c.meta for c in cands)
    params = get_method("smoacs").validate(_request(params={**TINY, "relax_final": "on"}))
    assert params.relaxes(job_relaxes=True)


def test_pass_size_is_the_whole_job_up_to_1024_on_a_gpu_and_256_on_a_cpu() -> None:
    params = SmoacsParams()
    assert params.pass_size("cuda") == 1024 and params.pass_size("cuda:1") == 1024
    assert params.pass_size("cpu") == 256
    assert SmoacsParams(batch_size=64).pass_size("cuda") == 64
    # Five candidates in passes of two: three passes, candidates numbered across them.
    progress, cands = _run(_request(num_candidates=5, params={**TINY, "batch_size": 2}))
    assert len(cands) == 5
    assert max(p.total for p in progress if p.phase == "optimize") == 3 * TINY["steps"]


def test_polish_rounds_return_relaxed_designs_scored_where_they_are() -> None:
    polish = {
        **TINY, "polish_rounds": 2, "polish_steps": 4, "progress_every": 2,
        "polish_relax_steps": 5,
    }  # fmt: skip
    progress, cands = _run(_request(relax=True, params=polish))
    steps = [p.step for p in progress if p.phase == "polish"]
    assert steps[0] == 0 and steps[-1] == 8 and steps == sorted(steps) and 6 in steps
    assert all(c.meta["polish_round"] in (0, 1, 2) for c in cands)
    _, plain = _run(_request(relax=True))
    # Same seed and main run: only the polish relaxations and rounds moved the cells.
    moved = [
        np.abs(a.crystal.lattice - b.crystal.lattice).max()
        for a, b in zip(cands, plain, strict=True)
    ]
    assert max(moved) > 1e-3
    assert all(is_charge_neutral(c.crystal) for c in cands)
    # What is returned carries the predictors' values at its own (relaxed) geometry: the
    # service's gap oracle agrees with the method's prediction.
    from ml.oracles.registry import get_oracle

    gaps = get_oracle("gap-chgnet-ft", "cpu").predict([c.crystal for c in cands])
    np.testing.assert_allclose([c.predicted["band_gap"] for c in cands], gaps, atol=2e-3)


def test_deterministic_kernels_only_while_the_method_computes() -> None:
    import torch.utils.deterministic as det

    from ml.methods.smoacs.method import deterministic_between_yields

    inside: list[tuple[bool, bool]] = []
    closed: list[bool] = []

    def events():
        try:
            for k in range(3):
                inside.append(
                    (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
                )
                yield k
        finally:
            closed.append(True)

    outside = []
    wrapped = deterministic_between_yields(events())
    for k in wrapped:
        # The job relaxes and scores a yielded batch here: default kernels.
        outside.append(torch.are_deterministic_algorithms_enabled())
        if k == 1:
            break
    assert closed == []
    wrapped.close()  # the runner stops early (a full selection, a cancel)
    assert inside == [(True, False), (True, False)]
    assert outside == [False, False]
    assert det.fill_uninitialized_memory  # restored
    assert not torch.are_deterministic_algorithms_enabled()
    assert closed == [True]  # the method's own generator is closed with it


def test_refinement_returns_judged_relaxed_designs_with_the_judges_values() -> None:
    refine = {
        **TINY, "refine_rounds": 1, "refine_proposals": 1, "refine_species_per_group": 2,
        "oversample": 1.5,
    }  # fmt: skip
    progress, cands = _run(_request(num_candidates=2, params=refine))
    phases = [p for p in progress if p.phase == "refine"]
    assert phases[0].step == 0 and phases[-1].step == phases[-1].total == 2
    assert phases[1].detail is not None and phases[1].detail["relaxed"] == 3  # 1.5 x 2 designs
    assert len(cands) == 2 and [c.meta["index"] for c in cands] == [0, 1]
    assert all("relax" in c.meta and "refine" in c.meta for c in cands)
    assert all(is_charge_neutral(c.crystal) for c in cands)
    assert all(set(c.crystal.species) <= set(ALLOWED) for c in cands)
    swapped = [c for c in cands if c.meta["refine"]["swaps"]]
    formulas = [c.crystal.formula for c in swapped]
    assert len(set(formulas)) == len(formulas)
    # The returned values are the service's oracles' at the returned (relaxed) crystals.
    from ml.oracles.registry import get_oracle

    crystals = [c.crystal for c in cands]
    gaps = np.maximum(get_oracle("gap-chgnet-ft", "cpu").predict(crystals), 0.0)
    eform = get_oracle("chgnet-eform", "cpu").predict(crystals)
    np.testing.assert_allclose([c.predicted["band_gap"] for c in cands], gaps, atol=1e-4)
    np.testing.assert_allclose([c.predicted["formation_energy"] for c in cands], eform, atol=1e-4)
