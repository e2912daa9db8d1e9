"""A design request -> the Crystal-GFN environment it allows (:class:`~.env.EnvSpec`), and
the paper's configuration as a request (appendix C), shared by the method, the training CLI
and the benchmark so a pretrained GFlowNet matches the jobs it was trained for."""

from __future__ import annotations

from typing import Any

from ml.methods.base import RequestError
from ml.methods.crystal_gfn.chemistry import symbol
from ml.methods.crystal_gfn.env import EnvSpec
from ml.methods.crystal_gfn.proxy import ProxyConfig
from ml.methods.crystal_gfn.spacegroups import element_counts
from ml.request import DesignRequest, reduced_amounts

__all__ = ["PAPER_ELEMENTS", "env_spec", "paper_request"]

# Appendix C: the 12 elements most common in the proxy's data, up to 5 per composition, up
# to 16 atoms per element; here cells of at most 20 atoms (MP-20, which the proxy and the
# Wyckoff generator are trained on) instead of the paper's 50.
PAPER_ELEMENTS = ("H", "Li", "C", "N", "O", "F", "Mg", "Si", "P", "S", "Cl", "Fe")


def paper_request(num_candidates: int = 64, **params: Any) -> DesignRequest:
    return DesignRequest.model_validate(
        {
            "method": "crystal_gfn",
            "objectives": [],
            "constraints": {
                "elements": {"allowed": list(PAPER_ELEMENTS)},
                "max_atoms": 20,
                "charge_neutral": True,
            },
            "num_candidates": num_candidates,
            "relax": True,
            "params": {"max_elements": 5, "max_per_element": 16, **params},
        }
    )


def _z(sym: str) -> int:
    from pymatgen.core import Element

    return int(Element(sym).Z)


def env_spec(
    request: DesignRequest, max_elements: int, max_per_element: int, proxy: ProxyConfig
) -> EnvSpec:
    """The environment of a request; RequestError naming the field when nothing fits."""
    from ml.constraints import oxidation_states

    cons = request.constraints
    required = tuple(sorted(_z(s) for s in cons.elements.required))
    if cons.composition is not None:
        amounts = reduced_amounts(cons.composition)
        composition = tuple(sorted((_z(s), a) for s, a in amounts.items()))
        elements = tuple(z for z, _ in composition)
        max_elements = len(elements)
    else:
        composition = None
        seen = set(proxy.elements_seen) or set(range(1, 95))
        elements = tuple(
            sorted(
                z
                for z in map(_z, cons.elements.usable())
                if (z in seen or z in required)
                and (not cons.charge_neutral or oxidation_states(symbol(z)))
            )
        )
    if not elements:
        raise RequestError(
            "constraints.elements",
            "no usable element: the allowed elements minus the excluded ones, restricted to "
            "those the proxy was trained on (and with oxidation states when charge_neutral)",
        )
    if len(required) > max_elements:
        raise RequestError(
            "params.max_elements", f"{len(required)} required elements exceed max_elements"
        )
    per_element = max(1, min(max_per_element, cons.max_atoms))
    groups = list(cons.space_groups or proxy.space_groups_seen or range(1, 231))
    groups = [g for g in groups if element_counts(g, per_element)]
    if composition is not None:
        groups = [g for g in groups if cons.formula_units_in(g)]
    if not groups:
        raise RequestError(
            "constraints.space_groups",
            "no allowed space group has Wyckoff positions for the allowed cell sizes "
            f"(max_atoms {cons.max_atoms}, max_per_element {max_per_element})",
        )
    return EnvSpec(
        elements=elements,
        space_groups=tuple(sorted(groups)),
        max_atoms=cons.max_atoms,
        max_per_element=max_per_element,
        max_elements=max_elements,
        required=required,
        neutral=cons.charge_neutral,
        composition=composition,
        formula_units=tuple(cons.formula_units) if cons.formula_units else None,
        perovskite=cons.crystal_family == "perovskite",
        box=proxy.box,
    )
