"""The design request: objectives, constraints and budget, shared by the API and every method.

Validation here names the offending field so the API can turn it into a 422.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymatgen.core import Composition, Element

Goal = Literal["minimize", "maximize", "target", "below", "above"]
Fidelity = Literal["pbe", "gllb_sc", "hse", "scan"]
CrystalFamily = Literal["perovskite"]

# Hard limits a single job may ask for; the service may lower them through settings.
MAX_CANDIDATES = 10_000
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


def _check_element(symbol: str) -> str:
    try:
        Element(symbol)
    except ValueError as exc:
        raise ValueError(f"unknown element {symbol!r}") from exc
    return symbol


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    property: str
    goal: Goal
    value: float | None = None
    tolerance: float | None = Field(default=None, ge=0)
    weight: float = Field(default=1.0, gt=0, le=1000)
    fidelity: Fidelity | None = None

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
        return self

    @property
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

    allowed: list[str] | None = None
    excluded: list[str] = Field(default_factory=list)
    required: list[str] = Field(default_factory=list)

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

    elements: ElementConstraints = Field(default_factory=ElementConstraints)
    charge_neutral: bool = True
    max_atoms: int = Field(default=20, ge=1, le=MAX_ATOMS)
    composition: str | None = None
    space_groups: list[int] | None = None
    crystal_family: CrystalFamily | None = None
    templates: list[str] | None = Field(default=None, max_length=MAX_TEMPLATES)
    # eV/atom, judged on the final (relaxed when relax) crystal by the default stability
    # oracle; an unscored crystal does not meet it. The runner returns only crystals meeting it.
    max_energy_above_hull: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("composition")
    @classmethod
    def _composition(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            comp = Composition(v)
        except Exception as exc:
            raise ValueError(f"unparseable composition {v!r}") from exc
        if comp.num_atoms <= 0:
            raise ValueError(f"empty composition {v!r}")
        return comp.formula.replace(" ", "")

    @field_validator("space_groups")
    @classmethod
    def _space_groups(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        bad = [g for g in v if not 1 <= g <= 230]
        if bad:
            raise ValueError(f"space group numbers must be 1-230, got {bad}")
        return list(dict.fromkeys(v))

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

    @model_validator(mode="after")
    def _consistent(self) -> Constraints:
        if self.composition is not None:
            comp = Composition(self.composition)
            for el in comp.elements:
                if not self.elements.permits(el.symbol):
                    raise ValueError(f"composition element {el.symbol} is not allowed")
            if comp.num_atoms > self.max_atoms:
                raise ValueError(
                    f"composition has {comp.num_atoms:g} atoms, "
                    f"more than max_atoms {self.max_atoms}"
                )
        return self


class DesignRequest(BaseModel):
    """What a lab user asks for. ``params`` are validated by the chosen method."""

    model_config = ConfigDict(extra="forbid")

    method: str
    objectives: list[Objective] = Field(default_factory=list, max_length=16)
    constraints: Constraints = Field(default_factory=Constraints)
    num_candidates: int = Field(default=64, ge=1, le=MAX_CANDIDATES)
    relax: bool = True
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    params: dict[str, Any] = Field(default_factory=dict)
    # property (or "energy_above_hull") -> oracle name; the rest use the defaults. The
    # energy_above_hull oracle also relaxes the candidates and picks the reference hull.
    oracles: dict[str, str] = Field(default_factory=dict, max_length=16)

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
