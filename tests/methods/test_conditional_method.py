"""The ``conditional`` method: parameter validation, composition proposal, a CPU run with a tiny
checkpoint, determinism and cancellation; the training CLI (tiny, resumable)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from pymatgen.core import Composition, Element

from ml.constraints import is_charge_neutral
from ml.methods.base import Cancelled, Candidate, MethodContext, Progress, RequestError
from ml.methods.conditional import method as method_mod
from ml.methods.conditional.checkpoint import WEIGHTS_DIR, load_release, save_release
from ml.methods.conditional.composition import CompositionStats, propose_compositions, prototype
from ml.methods.conditional.method import ConditionalMethod
from ml.methods.conditional.model import ConditionalFlowModel, ModelConfig
from ml.methods.registry import get_method
from ml.request import Constraints, DesignRequest

STATS = CompositionStats.from_formulas(
    [
        *[("SrTiO3", 5), ("SrTiO3", 10), ("BaTiO3", 5), ("TiO2", 6), ("TiO2", 12), ("SrO", 2)],
        *[("NaCl", 2), ("KCl", 2), ("MgO", 2), ("Al2O3", 10), ("Fe2O3", 10), ("LiFePO4", 28)],
    ]
)


@pytest.fixture()
def tiny_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    torch.manual_seed(0)
    model = ConditionalFlowModel(ModelConfig(d_model=32, layers=2, heads=4))
    path = tmp_path / "conditional-uniform.pt"
    save_release(model, path, {"note": "test"})
    monkeypatch.setattr(method_mod, "find_weights", lambda prior="uniform": path)
    # These tests are about the free-cell (v1) model, whichever checkpoints ship.
    monkeypatch.setattr(method_mod, "_default_model", lambda: "free-cell")
    method_mod._load_model.cache_clear()
    return path


def request(**kw: object) -> DesignRequest:
    base: dict[str, object] = {
        "method": "conditional",
        "objectives": [{"property": "formation_energy", "goal": "target", "value": -1.5}],
        "constraints": {"composition": "SrTiO3", "formula_units": [2], "space_groups": [123, 99]},
        "num_candidates": 6,
        "seed": 3,
        "params": {"steps": 4, "guidance": 1.0, "samples_per_composition": 2},
    }
    base.update(kw)
    return DesignRequest.model_validate(base)


def run_all(req: DesignRequest, ctx: MethodContext | None = None) -> list[Candidate]:
    m = ConditionalMethod()
    params = m.validate(req)
    events = list(m.run(req, params, ctx or MethodContext()))
    assert any(isinstance(e, Progress) for e in events)
    return [c for e in events if isinstance(e, list) for c in e]


def test_missing_checkpoint_for_prior_is_a_request_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(prior: str = "uniform") -> Path:
        raise FileNotFoundError(f"conditional-{prior}.pt")

    monkeypatch.setattr(method_mod, "find_weights", missing)
    with pytest.raises(RequestError) as err:
        ConditionalMethod().validate(request(params={"prior": "normal"}))
    assert err.value.field == "params.prior"


def test_registered_under_its_name() -> None:
    assert isinstance(get_method("conditional"), ConditionalMethod)


def test_params_are_validated() -> None:
    m = ConditionalMethod()
    with pytest.raises(ValidationError, match="guidance"):
        m.validate(request(params={"guidance": -1}))
    with pytest.raises(ValidationError, match="bogus"):
        m.validate(request(params={"bogus": 1}))
    with pytest.raises(ValidationError, match="prior"):
        m.validate(request(params={"prior": "gaussian"}))
    with pytest.raises(ValidationError, match="whole numbers of atoms"):
        request(constraints={"composition": "Sr0.5TiO3"})


def test_run_generates_the_requested_composition(tiny_weights: Path) -> None:
    cands = run_all(request())
    assert len(cands) == 6
    for c in cands:
        assert Counter(c.crystal.species) == Counter({"O": 6, "Sr": 2, "Ti": 2})
        assert (c.crystal.frac_coords >= 0).all() and (c.crystal.frac_coords < 1).all()
        # No predictor: the conditioning target is kept as such, never as a prediction.
        assert c.predicted == {}
        assert c.meta["targets"] == {"formation_energy": -1.5}
    assert {c.meta["space_group_condition"] for c in cands} == {123, 99}


def test_same_seed_same_candidates(tiny_weights: Path) -> None:
    a = run_all(request())
    b = run_all(request())
    c = run_all(request(seed=4))
    for x, y in zip(a, b, strict=True):
        assert (x.crystal.frac_coords == y.crystal.frac_coords).all()
    pairs = zip(a, c, strict=True)
    assert any((x.crystal.frac_coords != z.crystal.frac_coords).any() for x, z in pairs)


def test_cancellation_is_checked(tiny_weights: Path) -> None:
    with pytest.raises(Cancelled):
        run_all(request(), MethodContext(should_cancel=lambda: True))


def test_proposed_compositions_meet_the_constraints() -> None:
    cons = Constraints(elements={"allowed": ["Sr", "Ti", "O"], "required": ["O"]}, max_atoms=10)
    props = propose_compositions(cons, 12, STATS)
    assert props, "no proposal"
    formulas = {p.formula for p in props}
    assert "SrTiO3" in formulas  # a training-set composition satisfying the constraints
    assert [p.score for p in props] == sorted((p.score for p in props), reverse=True)
    for p in props:
        comp = Composition(p.formula)
        assert {e.symbol for e in comp.elements} <= {"Sr", "Ti", "O"}
        assert "O" in {e.symbol for e in comp.elements}
        assert p.num_atoms <= 10 and is_charge_neutral(p.formula)
    assert any(p.source == "enumerated" for p in props)
    assert prototype(Composition("SrTiO3")) == "ABC3"


def test_known_formulas_are_proposed_after_all_others() -> None:
    cons = Constraints(elements={"allowed": ["Sr", "Ti", "O"], "required": ["O"]}, max_atoms=10)
    plain = [p.formula for p in propose_compositions(cons, 10_000, STATS)]
    known = {"SrTiO3", "SrO", "TiO2"} & set(plain)
    assert known and plain.index("SrTiO3") < 5
    steered = [p.formula for p in propose_compositions(cons, 10_000, STATS, avoid=known)]
    assert sorted(steered) == sorted(plain)  # the same proposals, reordered
    first_known = min(steered.index(f) for f in known)
    assert all(f not in known for f in steered[:first_known])
    assert all(f in known for f in steered[first_known:])


def test_enumeration_covers_unseen_elements() -> None:
    # No training formula has Ca and S: the neutral enumeration must still find CaS.
    cons = Constraints(elements={"allowed": ["Ca", "S"]}, max_atoms=4)
    props = propose_compositions(cons, 5, STATS)
    assert "CaS" in {p.formula for p in props}
    assert all(p.source == "enumerated" for p in props)


def test_run_without_composition_proposes_one(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        method_mod,
        "propose_compositions",
        lambda c, n, avoid: propose_compositions(c, n, STATS, avoid=avoid),
    )
    monkeypatch.setattr(method_mod, "known_formulas", lambda: frozenset({"NaCl"}))
    req = request(
        constraints={"elements": {"allowed": ["Na", "K", "Cl"]}, "max_atoms": 4},
        num_candidates=4,
    )
    cands = run_all(req)
    assert len(cands) == 4
    for c in cands:
        assert set(c.crystal.species) <= {"Na", "K", "Cl"} and c.crystal.num_atoms <= 4
    # Known formulas come last: NaCl is the most plausible, but there are enough others.
    assert "NaCl" not in {Composition(c.meta["composition"]).reduced_formula for c in cands}


def test_training_cli_writes_and_resumes(tmp_path: Path) -> None:
    from ml.methods.conditional.train import parse_args, train

    out, state = tmp_path / "w.pt", tmp_path / "state.pt"
    common = ["--limit", "12", "--d-model", "32", "--layers", "1", "--heads", "4"]
    common += ["--batch-size", "8", "--out", str(out), "--state", str(state), "--log-every", "1"]
    info = train(parse_args([*common, "--steps", "2"]))
    assert info["steps"] == 2 and out.exists() and state.exists()
    info = train(parse_args([*common, "--steps", "4"]))
    assert info["steps"] == 4  # continued from step 2, not restarted
    model, meta = load_release(out)
    assert meta["steps"] == 4 and model.config.length_mu != (0.0, 0.0, 0.0)


@pytest.mark.slow
def test_released_weights_run_quickly_on_cpu() -> None:
    """The shipped checkpoint serves a small job on CPU (what the API job test runs)."""
    path = WEIGHTS_DIR / "conditional-uniform.pt"
    if not path.exists():
        pytest.skip("weights not trained yet")
    method_mod._load_model.cache_clear()
    req = request(num_candidates=4, params={"steps": 10, "guidance": 1.0, "model": "free-cell"})
    cands = run_all(req)
    assert len(cands) == 4
    assert all(c.crystal.num_atoms == 10 for c in cands)


@pytest.mark.slow
def test_released_wyckoff_weights_keep_the_requested_space_group() -> None:
    """The shipped Wyckoff generator (the default once present): ZnO in P6_3mc comes out as
    2 formula units generated in group 186, and spglib finds 186 in them."""
    from ml.constraints import space_group_number

    if not (WEIGHTS_DIR / "conditional-wyckoff.pt").exists():
        pytest.skip("weights not trained yet")
    req = request(
        num_candidates=4,
        objectives=[{"property": "formation_energy", "goal": "target", "value": -1.7}],
        constraints={"composition": "ZnO", "space_groups": [186]},
        params={"steps": 20},
    )
    assert ConditionalMethod().validate(req).model == "wyckoff"
    cands = run_all(req)
    assert len(cands) == 4
    assert all(c.meta["space_group_generated"] == 186 for c in cands)
    assert all(c.crystal.num_atoms == 4 for c in cands)
    assert sum(space_group_number(c.crystal) == 186 for c in cands) >= 3


def test_open_requests_get_new_compositions_from_ion_substitution() -> None:
    """With no composition given, the compositions are new formulas made by ion exchange on
    stable known materials (the substitution baseline's model), within the constraints; with
    new_compositions false the most plausible known ones come back."""
    req = DesignRequest.model_validate(
        {
            "method": "conditional",
            "objectives": [{"property": "band_gap", "goal": "target", "value": 1.5}],
            "constraints": {
                "elements": {"excluded": ["Pb", "Cd", "Hg", "As", "Tl", "Be"]},
                "max_atoms": 12,
            },
            "num_candidates": 32,
        }
    )
    method = ConditionalMethod()
    cells = method._cells(req, method.validate(req))
    assert len(cells) == 4 and {source for _, _, source in cells} == {"substituted"}
    known = method_mod.known_formulas()
    for numbers, _, _ in cells:
        comp = Composition({Element.from_Z(z).symbol: n for z, n in Counter(numbers).items()})
        assert comp.reduced_formula not in known
        assert not {"Pb", "Cd", "Hg", "As", "Tl", "Be"} & {e.symbol for e in comp.elements}
        assert len(numbers) <= 12 and is_charge_neutral(comp.reduced_formula)
    plain = req.model_copy(update={"params": {"new_compositions": False}})
    old = method._cells(plain, method.validate(plain))
    assert {source for _, _, source in old} == {"training"}
