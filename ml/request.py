"""The design request: objectives, constraints and budget, shared by the API and every method.

Validation here names the offending field so the API can turn it into a 422.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pymatgen.core import Composition, Element

Goal = Literal["minimize", "maximize", "target", "below", "above"]
Fidelity = Literal["pbe", "gllb_sc", "hse", "scan"]
CrystalFamily = Literal["perovskite"]

# Hard limits a single job may ask for; the service may lower them through settings.
MAX_CANDIDATES = 10_000
# Over-generation beyond this costs more oracle time than the selection gains.
MAX_OVERSAMPLE = 16
MAX_ATOMS = 200
MAX_TEMPLATES = 64
MAX_TEMPLATE_CIF_CHARS = 200_000

# Properties known without asking the oracle registry (it adds its own at run time).
CORE_PROPERTIES = frozenset(
    {"formation_energy", "band_gap", "energy_above_hull", "density", "tolerance_factor", "hhi"}
)


def _known_properties() -> frozenset[str]:
    try:
        from ml.oracles.registry import known_properties
    except ImportError:  # registry not importable (e.g. partial install): core set only
        return CORE_PROPERTIES
    return CORE_PROPERTIES | frozenset(known_properties())


# Elements the oracles know: MEGNet and CHGNet cover H to Pu.
MAX_Z = 94
# Band of a "target" objective given without a tolerance: 10 % of |value|, at least 0.1.
DEFAULT_TARGET_BAND = 0.1


def default_tolerance(value: float) -> float:
    """The tolerance a target objective gets when the request gives none."""
    return DEFAULT_TARGET_BAND * max(abs(value), 1.0)


def parse_composition(text: str) -> Composition:
    """The one parser of a composition written by a user (every method's composition goes
    through it, via :class:`Constraints`): element symbols as written (case matters), real
    elements up to Pu, whole positive amounts. Raises ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("composition is empty")
    try:
        comp = Composition(text.strip())
    except Exception as exc:  # pymatgen raises ValueError, KeyError, ... on bad formulas
        raise ValueError(
            f"unparseable composition {text!r}: write a formula with element symbols, "
            "e.g. LiFePO4 (symbols are case-sensitive)"
        ) from exc
    unknown = [str(el) for el in comp.elements if not isinstance(el, Element)]
    if unknown:
        names = ", ".join(repr(u.rstrip("0+-")) for u in unknown)
        raise ValueError(f"composition {text!r} has unknown element symbols: {names}")
    if comp.num_atoms <= 0:
        raise ValueError(f"composition {text!r} has no atoms")
    beyond = [el.symbol for el in comp.elements if el.Z > MAX_Z]
    if beyond:
        raise ValueError(f"elements beyond Pu are not supported by the oracles: {beyond}")
    fractional = [f"{a:g} {el.symbol}" for el, a in comp.items() if abs(a - round(a)) > 1e-6]
    if fractional:
        raise ValueError(
            f"composition {text!r} needs whole numbers of atoms (got {', '.join(fractional)})"
        )
    return comp


def reduced_amounts(formula: str) -> dict[str, int]:
    """Whole atoms of each element in one formula unit of the reduced formula."""
    reduced = parse_composition(formula).reduced_composition
    return {el.symbol: round(a) for el, a in reduced.items()}


def _check_element(symbol: str) -> str:
    try:
        Element(symbol)
    except ValueError as exc:
        raise ValueError(f"unknown element {symbol!r}") from exc
    return symbol


class Objective(BaseModel):
    """One target property of the design: what to aim for and how much it counts."""

    model_config = ConfigDict(extra="forbid")

    property: str = Field(
        description="Property to design for, in its oracle's unit (GET /v1/oracles): "
        "formation_energy (eV/atom), band_gap (eV), energy_above_hull (eV/atom), "
        "density (g/cm^3), tolerance_factor (unitless), hhi (unitless, 0-10000).",
        examples=["band_gap"],
    )
    goal: Goal = Field(
        description="minimize / maximize: rank by the value (always counts as met); "
        "target: value ± tolerance; below / above: strictly below / above value."
    )
    value: float | None = Field(
        default=None,
        description="Target or threshold, in the property's unit (eV, eV/atom, g/cm^3, ...); "
        "needed by target, below and above.",
    )
    tolerance: float | None = Field(
        default=None,
        ge=0,
        description="Half-width of a target's band, in the property's unit (eV for band_gap, "
        "eV/atom for energies, g/cm^3 for density). When left out, a target gets 10 % of "
        "|value| (at least 0.1), written into the stored request.",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Weight of this objective's loss in the ranking (unitless).",
    )
    fidelity: Fidelity | None = Field(
        default=None,
        description="band_gap only: the DFT functional the gap oracle predicts (pbe default; "
        "gllb_sc, hse, scan from the multi-fidelity MEGNet model, trained on far fewer "
        "non-PBE gaps: a non-PBE gap may even come out below the PBE one).",
    )

    @field_validator("property")
    @classmethod
    def _known(cls, v: str) -> str:
        known = _known_properties()
        if v not in known:
            raise ValueError(f"unknown property {v!r}; known: {sorted(known)}")
        return v

    @model_validator(mode="after")
    def _value_needed(self) -> Objective:
        if self.goal in ("target", "below", "above") and self.value is None:
            raise ValueError(f"goal {self.goal!r} needs a value")
        if self.fidelity is not None and self.property != "band_gap":
            raise ValueError("fidelity applies to band_gap only")
        if self.goal == "target" and self.tolerance is None:
            assert self.value is not None
            self.tolerance = default_tolerance(self.value)  # stored, so the band is visible
        return self

    @builtins.property  # the field named "property" shadows the builtin in this class
    def extremal(self) -> bool:
        """A minimize/maximize goal: no value meets it alone; the pipeline judges it over the
        job (top decile, :func:`ml.pipeline.final_hits`)."""
        return self.goal in ("minimize", "maximize")

    def satisfied(self, value: float | None) -> bool:
        """Whether an oracle value meets this objective. A min/max goal only needs a score
        here; whether the value is good enough is judged over the job (``extremal``)."""
        if value is None or value != value:  # None or NaN: unscored never hits
            return False
        if self.goal == "target":
            assert self.value is not None
            tol = self.tolerance if self.tolerance is not None else 0.1 * max(abs(self.value), 1.0)
            return abs(value - self.value) <= tol
        if self.goal == "below":
            assert self.value is not None
            return value < self.value
        if self.goal == "above":
            assert self.value is not None
            return value > self.value
        return True

    def loss(self, value: float) -> float:
        """Non-negative badness of a value; 0 when a threshold or target band is met.

        Used for ranking: min/max goals contribute the signed value itself.
        """
        if self.goal == "minimize":
            return value
        if self.goal == "maximize":
            return -value
        assert self.value is not None
        if self.goal == "target":
            tol = self.tolerance or 0.0
            return max(0.0, abs(value - self.value) - tol)
        if self.goal == "below":
            return max(0.0, value - self.value)
        return max(0.0, self.value - value)


class ElementConstraints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed: list[str] | None = Field(
        default=None,
        description="Element symbols a structure may contain (null: any element H-Pu).",
        examples=[["Ba", "Sr", "Ti", "O"]],
    )
    excluded: list[str] = Field(
        default_factory=list, description="Element symbols a structure must not contain."
    )
    required: list[str] = Field(
        default_factory=list, description="Element symbols every structure must contain."
    )

    @field_validator("allowed", "excluded", "required")
    @classmethod
    def _elements(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for symbol in v:
            _check_element(symbol)
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _consistent(self) -> ElementConstraints:
        if self.allowed is not None:
            usable = set(self.allowed) - set(self.excluded)
            if not usable:
                raise ValueError("no element left: allowed minus excluded is empty")
            missing = [e for e in self.required if e not in usable]
            if missing:
                raise ValueError(f"required elements {missing} are not allowed")
        clash = set(self.required) & set(self.excluded)
        if clash:
            raise ValueError(f"elements {sorted(clash)} are both required and excluded")
        return self

    def permits(self, symbol: str) -> bool:
        if symbol in self.excluded:
            return False
        return self.allowed is None or symbol in self.allowed

    def usable(self) -> list[str]:
        """Allowed symbols after exclusions (all real elements up to Bi-Pu range if unset)."""
        base = self.allowed if self.allowed is not None else [e.symbol for e in _ALL_ELEMENTS]
        return [e for e in base if e not in self.excluded]


# Elements the oracles know (MEGNet/CHGNet cover Z <= 94); noble gases are legal but rare.
_ALL_ELEMENTS = [Element.from_Z(z) for z in range(1, 95)]


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    elements: ElementConstraints = Field(
        default_factory=ElementConstraints,
        description="Which elements may, must or must not occur.",
    )
    charge_neutral: bool = Field(
        default=True,
        description="Require strict charge neutrality: some assignment of ICSD oxidation "
        "states to the atoms sums to zero (all-metal compositions pass only when false).",
    )
    max_atoms: int = Field(
        default=20, ge=1, le=MAX_ATOMS, description="Most atoms in the (primitive) cell."
    )
    composition: str | None = Field(
        default=None,
        description="Exact composition: the reduced formula (stored reduced, e.g. Li4Fe4P4O16 "
        "becomes LiFePO4) in any number of formula units whose cell fits max_atoms, or only "
        "those listed in formula_units. Element symbols are case-sensitive; amounts whole.",
        examples=["LiFePO4"],
    )
    formula_units: list[int] | None = Field(
        default=None,
        validate_default=True,
        description="Numbers of formula units Z per cell allowed for composition "
        "(null: every Z with Z x atoms per formula unit <= max_atoms). Methods that generate "
        "for a space group use the Z the group's Wyckoff positions allow.",
        examples=[[4]],
    )
    space_groups: list[int] | None = Field(
        default=None,
        description="Allowed space groups (international numbers 1-230, spglib at symprec "
        "0.1 Å on the final crystal).",
        examples=[[62]],
    )
    crystal_family: CrystalFamily | None = Field(
        default=None,
        description="perovskite: ABX3 stoichiometry (n_atoms a multiple of 5, 3/5 of them "
        "anion-capable N, O, S, Se, Te, F, Cl, Br, I).",
    )
    templates: list[str] | None = Field(
        default=None,
        max_length=MAX_TEMPLATES,
        description="CIF texts of template structures (methods that start from structures; "
        f"at most {MAX_TEMPLATES}, each at most {MAX_TEMPLATE_CIF_CHARS} characters).",
    )
    max_energy_above_hull: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Largest energy above hull (eV/atom) a returned crystal may have, judged on "
        "the final (relaxed when relax) crystal by the stability oracle; an unscored crystal "
        "does not meet it. The job over-generates and returns only crystals meeting it.",
    )

    @field_validator("composition")
    @classmethod
    def _composition(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        comp = parse_composition(v)
        elements = info.data.get("elements")
        if isinstance(elements, ElementConstraints):
            for el in comp.elements:
                if el.symbol in elements.excluded:
                    raise ValueError(f"composition element {el.symbol} is in elements.excluded")
                if not elements.permits(el.symbol):
                    raise ValueError(f"composition element {el.symbol} is not in elements.allowed")
            missing = [e for e in elements.required if e not in {x.symbol for x in comp}]
            if missing:
                raise ValueError(f"composition lacks required elements {missing}")
        reduced = comp.reduced_composition
        per_fu = round(reduced.num_atoms)
        max_atoms = info.data.get("max_atoms")
        if isinstance(max_atoms, int) and per_fu > max_atoms:
            raise ValueError(
                f"{comp.reduced_formula} has {per_fu} atoms per formula unit, "
                f"more than max_atoms {max_atoms}"
            )
        return comp.reduced_formula

    @field_validator("formula_units")
    @classmethod
    def _formula_units(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if v is None:
            return v
        composition = info.data.get("composition")
        if composition is None:
            if "composition" in info.data:  # given as null, not failed validation
                raise ValueError("formula_units needs a composition")
            return v
        if not v:
            raise ValueError("formula_units is empty")
        bad = [z for z in v if z < 1]
        if bad:
            raise ValueError(f"formula units must be at least 1, got {bad}")
        zs = sorted(set(v))
        max_atoms = info.data.get("max_atoms")
        if isinstance(max_atoms, int):
            per_fu = sum(reduced_amounts(composition).values())
            too_big = [z for z in zs if z * per_fu > max_atoms]
            if too_big:
                raise ValueError(
                    f"{too_big} formula units of {composition} ({per_fu} atoms each) exceed "
                    f"max_atoms {max_atoms}"
                )
        return zs

    @field_validator("space_groups")
    @classmethod
    def _space_groups(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if v is None:
            return v
        bad = [g for g in v if not 1 <= g <= 230]
        if bad:
            raise ValueError(f"space group numbers must be 1-230, got {bad}")
        groups = list(dict.fromkeys(v))
        composition = info.data.get("composition")
        max_atoms = info.data.get("max_atoms")
        if composition is not None and isinstance(max_atoms, int) and "formula_units" in info.data:
            _check_space_groups(composition, info.data["formula_units"], max_atoms, groups)
        return groups

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from ml.crystal import Crystal

        for i, cif in enumerate(v):
            if len(cif) > MAX_TEMPLATE_CIF_CHARS:
                raise ValueError(f"template {i} is longer than {MAX_TEMPLATE_CIF_CHARS} chars")
            try:
                Crystal.from_cif(cif)
            except ValueError as exc:
                raise ValueError(f"template {i}: {exc}") from exc
        return v

    def formula_unit_choices(self) -> list[int]:
        """Numbers of formula units a cell of ``composition`` may hold ([] without one)."""
        if self.composition is None:
            return []
        per_fu = sum(reduced_amounts(self.composition).values())
        zs = self.formula_units or range(1, self.max_atoms // per_fu + 1)
        return [z for z in zs if z * per_fu <= self.max_atoms]

    def formula_units_in(self, space_group: int) -> list[int]:
        """Formula units of ``composition`` whose primitive cell can have ``space_group``."""
        from ml.symmetry import formula_units_for

        assert self.composition is not None
        return formula_units_for(
            reduced_amounts(self.composition), space_group, self.formula_unit_choices()
        )


def _check_space_groups(
    composition: str, formula_units: list[int] | None, max_atoms: int, groups: list[int]
) -> None:
    """A composition and space groups that no allowed cell can satisfy: say why."""
    from ml.symmetry import formula_units_for, space_group_symbol

    amounts = reduced_amounts(composition)
    per_fu = sum(amounts.values())
    zs = formula_units or list(range(1, max_atoms // per_fu + 1))
    if any(formula_units_for(amounts, g, zs) for g in groups):
        return
    reasons = []
    for g in groups:
        # The smallest Z this group would take (up to the data's largest cells, 200 atoms).
        need = formula_units_for(amounts, g, range(1, MAX_ATOMS // per_fu + 1))
        sym = space_group_symbol(g)
        if need:
            reasons.append(f"{g} ({sym}) needs Z in {need[:4]} ({need[0] * per_fu} atoms or more)")
        else:
            reasons.append(f"{g} ({sym}) cannot hold it within {MAX_ATOMS} atoms")
    allowed = f"Z in {zs}" if formula_units else f"at most {max_atoms} atoms"
    raise ValueError(
        f"no cell of {composition} with {allowed} fits the space groups (Wyckoff "
        f"multiplicities of the primitive cell): {'; '.join(reasons)}"
    )


class DesignRequest(BaseModel):
    """What a lab user asks for. ``params`` are validated by the chosen method."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(
        description="Design method (GET /v1/methods lists them with their params).",
        examples=["substitution"],
    )
    objectives: list[Objective] = Field(
        default_factory=list,
        max_length=16,
        description="Target properties; a structure is a hit when it meets all of them.",
    )
    constraints: Constraints = Field(
        default_factory=Constraints, description="Hard constraints every hit must meet."
    )
    num_candidates: int = Field(
        default=64,
        ge=1,
        le=MAX_CANDIDATES,
        description="Candidate structures to generate, evaluate and store (count). When left "
        "out, the "
        "server's default (MATDESIGN_DEFAULT_NUM_CANDIDATES: 8 on the embedded CPU server, "
        "64 with Celery workers) is written into the stored request.",
        json_schema_extra=lambda schema: schema.pop("default", None),
    )
    relax: bool = Field(
        default=True,
        description="Relax every valid candidate with CHGNet (FIRE, fmax 0.1 eV/Å, 300 steps) "
        "before scoring; slow on CPU. When left out, the server's default "
        "(MATDESIGN_DEFAULT_RELAX: off on the embedded CPU server, on with Celery GPU "
        "workers) is written into the stored request.",
        json_schema_extra=lambda schema: schema.pop("default", None),
    )
    oversample: int = Field(
        default=1,
        ge=1,
        le=MAX_OVERSAMPLE,
        description="Over-generation factor (count): the method proposes num_candidates x "
        "oversample crystals, every one is scored by the oracles, and the best num_candidates "
        "are returned, hits that are metastable, unique and novel first. 1 returns the first "
        "num_candidates the method proposes. A stability limit "
        "(constraints.max_energy_above_hull) over-generates at least 4x. When left out, the "
        "server's default (MATDESIGN_DEFAULT_OVERSAMPLE: 1 on the embedded CPU server; with "
        "Celery GPU workers 4 up to 256 candidates, then as much as keeps the method at 1,024 "
        "candidates, and 1 from the sharding size on) is written into the stored request.",
        json_schema_extra=lambda schema: schema.pop("default", None),
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="Random seed (unitless integer): same request, seed and weights give the "
        "same candidates.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the chosen method (GET /v1/methods: params_schema, "
        "defaults); unknown ones are rejected.",
    )
    label: str | None = Field(
        default=None,
        max_length=200,
        description="Free text to find the job by (GET /v1/jobs?label=...).",
        examples=["LFP polymorphs, run 1"],
    )
    oracles: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="Oracle by name for a property, replacing the default (GET /v1/oracles "
        "lists them); the key energy_above_hull names the energy oracle that relaxes the "
        "candidates and judges stability against its own reference hull, e.g. "
        '{"energy_above_hull": "chgnet-energy", "band_gap": "megnet-gap-pbe"}.',
    )

    @field_validator("oracles")
    @classmethod
    def _oracles(cls, v: dict[str, str]) -> dict[str, str]:
        from ml.oracles.registry import check_oracle_choice

        for key, name in v.items():
            try:
                check_oracle_choice(key, name)
            except ValueError as exc:
                raise ValueError(f"oracles.{key}: {exc}") from None
        return v

    def hit(self, scores: dict[str, float | None]) -> bool:
        """Whether oracle scores meet every target/threshold objective and score every
        min/max one (missing property: not a hit). The top-decile rule for min/max objectives
        needs the whole job: :func:`ml.pipeline.final_hits`."""
        return all(o.satisfied(scores.get(o.property)) for o in self.objectives)

    def objective_loss(self, scores: dict[str, float | None]) -> float:
        """Weighted sum of objective losses; unscored properties rank last."""
        total = 0.0
        for o in self.objectives:
            v = scores.get(o.property)
            if v is None or v != v:
                return float("inf")
            total += o.weight * o.loss(float(v))
        return total


def request_hash(request: DesignRequest) -> str:
    """SHA-256 of the request's canonical JSON: what an idempotency key is checked against.

    Here, not in app.jobs, so scripts that store jobs without the HTTP layer (the GPU box has
    no FastAPI) hash requests the same way."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
