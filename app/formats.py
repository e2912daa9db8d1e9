"""A job's structures in formats other tools read: extended XYZ (ASE) and OPTIMADE-style JSON.

Each structure is written in the geometry its scores belong to: the relaxed one when the job
relaxed it, else the proposed one (``geometry`` / ``_matdesign_geometry`` says which).
"""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from typing import Any

from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from app import __version__
from app.jobs import StructureView

OPTIMADE_API_VERSION = "1.2.0"
PREFIX = "_matdesign_"


def geometry(row: StructureView) -> tuple[Structure, str]:
    if row.relaxed_cif:
        return Structure.from_str(row.relaxed_cif, fmt="cif"), "relaxed"
    return Structure.from_str(row.cif, fmt="cif"), "proposed"


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _info(row: StructureView, geom: str) -> dict[str, Any]:
    """Per-frame info of the extxyz: scalars only (ASE writes them as key=value pairs)."""
    info: dict[str, Any] = {
        "matdesign_id": row.id,
        "job_id": row.job_id,
        "rank": row.rank if row.rank is not None else -1,
        "formula": row.formula,
        "geometry": geom,
    }
    if row.space_group is not None:
        info["space_group"] = row.space_group
    for sc in row.scores:
        v = _finite(sc.value)
        if v is not None:
            # The unit in the key: extxyz has no per-key units.
            info[f"{sc.property}_{_unit_key(sc.unit)}"] = v
    if (e := _finite(row.energy_above_hull)) is not None:
        info["e_above_hull_eV_per_atom"] = e
    if (m := _finite(row.method_score)) is not None:
        info["method_score"] = m
    for flag, value in row.flags.items():
        info[f"flag_{flag}"] = bool(value)
    return info


def _unit_key(unit: str) -> str:
    return unit.replace("/", "_per_").replace("^", "").replace(" ", "") or "1"


def to_extxyz(rows: list[StructureView]) -> str:
    from ase.io import write

    frames = []
    for row in rows:
        structure, geom = geometry(row)
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info.update(_info(row, geom))
        frames.append(atoms)
    out = io.StringIO()
    write(out, frames, format="extxyz")
    return out.getvalue()


def _formulas(comp: Composition) -> dict[str, Any]:
    """OPTIMADE's formula fields: reduced (alphabetical, no 1s) and anonymous (A, B, ... by
    descending count)."""
    reduced = comp.reduced_composition.get_el_amt_dict()
    counts = {el: round(n) for el, n in reduced.items()}

    def part(symbol: str, n: int) -> str:
        return symbol if n == 1 else f"{symbol}{n}"

    letters = [chr(ord("A") + i) for i in range(26)]
    ordered = sorted(counts.values(), reverse=True)
    return {
        "chemical_formula_reduced": "".join(part(el, counts[el]) for el in sorted(counts)),
        "chemical_formula_anonymous": "".join(part(letters[i], n) for i, n in enumerate(ordered)),
    }


def optimade_entry(row: StructureView, now: datetime) -> dict[str, Any]:
    structure, geom = geometry(row)
    comp = structure.composition
    elements = sorted(el.symbol for el in comp.elements)
    total = comp.num_atoms
    symbols = [site.specie.symbol for site in structure]
    attributes: dict[str, Any] = {
        "last_modified": now.isoformat(),
        "immutable_id": row.id,
        "elements": elements,
        "nelements": len(elements),
        "elements_ratios": [comp[el] / total for el in elements],
        "chemical_formula_descriptive": row.formula,
        **_formulas(comp),
        "dimension_types": [1, 1, 1],
        "nperiodic_dimensions": 3,
        "lattice_vectors": structure.lattice.matrix.tolist(),
        "cartesian_site_positions": structure.cart_coords.tolist(),
        "nsites": len(structure),
        "species": [
            {"name": el, "chemical_symbols": [el], "concentration": [1.0]} for el in elements
        ],
        "species_at_sites": symbols,
        "structure_features": [],
        f"{PREFIX}job_id": row.job_id,
        f"{PREFIX}rank": row.rank,
        f"{PREFIX}geometry": geom,
        f"{PREFIX}energy_above_hull": _finite(row.energy_above_hull),
        f"{PREFIX}method_score": _finite(row.method_score),
        f"{PREFIX}flags": dict(row.flags),
        f"{PREFIX}units": {sc.property: sc.unit for sc in row.scores}
        | {"energy_above_hull": "eV/atom"},
        f"{PREFIX}oracles": {sc.property: f"{sc.oracle} {sc.version}" for sc in row.scores},
    }
    if row.space_group is not None:
        attributes["space_group_it_number"] = row.space_group
    for sc in row.scores:
        attributes[f"{PREFIX}{sc.property}"] = _finite(sc.value)
    return {"id": row.id, "type": "structures", "attributes": attributes}


def to_optimade(rows: list[StructureView], base_url: str = "") -> dict[str, Any]:
    """An OPTIMADE-style ``structures`` response (JSON:API document) of ``rows``."""
    now = datetime.now(UTC).replace(microsecond=0)
    return {
        "data": [optimade_entry(row, now) for row in rows],
        "meta": {
            "query": {"representation": "/structures"},
            "api_version": OPTIMADE_API_VERSION,
            "more_data_available": False,
            "data_returned": len(rows),
            "time_stamp": now.isoformat(),
            "provider": {
                "name": "matdesign",
                "description": "Crystal structures designed by a matdesign server",
                "prefix": PREFIX.strip("_"),
            },
            "implementation": {"name": "matdesign", "version": __version__},
        },
    }
