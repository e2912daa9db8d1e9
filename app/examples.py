"""Example design requests, one per method, shown in the OpenAPI schema (``/docs``) and
checked by the tests to pass the server's validation as they stand."""

from __future__ import annotations

from typing import Any

from ml.methods.registry import method_names

EXAMPLES: dict[str, dict[str, Any]] = {
    "substitution": {
        "summary": "substitution: perovskite-like oxides and sulfides with a 1.5 eV gap",
        "description": "Ion exchange on Perov-5 references; fast on CPU (about 20 s).",
        "value": {
            "method": "substitution",
            "label": "BaTiO3 family, gap 1.5 eV",
            "objectives": [
                {"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.5},
                {"property": "formation_energy", "goal": "below", "value": -0.5},
            ],
            "constraints": {
                "elements": {"allowed": ["Ba", "Sr", "Ca", "Ti", "Zr", "O", "S"]},
                "max_atoms": 10,
            },
            "num_candidates": 4,
            "relax": False,
            "seed": 0,
            "params": {"datasets": ["perov5"]},
        },
    },
    "conditional": {
        "summary": "conditional: LiFePO4 in Pnma (4 formula units, 28 atoms)",
        "description": "Flow-matching generator conditioned on the composition, the space "
        "group and a formation energy; the method picks the formula units the group needs.",
        "value": {
            "method": "conditional",
            "objectives": [{"property": "formation_energy", "goal": "below", "value": -2.0}],
            "constraints": {"composition": "LiFePO4", "space_groups": [62], "max_atoms": 30},
            "num_candidates": 8,
            "relax": False,
            "seed": 0,
            "params": {"guidance": 1.0, "steps": 100},
        },
    },
    "smoacs": {
        "summary": "smoacs: cubic perovskites with a 2 eV gap (gradient design)",
        "description": "Optimises lattice, coordinates and element choices through MEGNet.",
        "value": {
            "method": "smoacs",
            "objectives": [
                {"property": "band_gap", "goal": "target", "value": 2.0, "tolerance": 0.3}
            ],
            "constraints": {"crystal_family": "perovskite", "max_atoms": 5},
            "num_candidates": 8,
            "relax": False,
            "seed": 0,
            "params": {"steps": 200},
        },
    },
    "cliqueflowmer": {
        "summary": "cliqueflowmer: lowest formation energy among Li-Mn-O compounds",
        "description": "Optimises in the latent space of a trained generator, then decodes.",
        "value": {
            "method": "cliqueflowmer",
            "objectives": [{"property": "formation_energy", "goal": "minimize"}],
            "constraints": {"elements": {"allowed": ["Li", "Mn", "O"]}, "max_atoms": 20},
            "num_candidates": 8,
            "relax": False,
            "seed": 0,
            "params": {"steps": 500},
        },
    },
    "crystal_gfn": {
        "summary": "crystal_gfn: diverse stable Li-Mg-O-F crystals (GFlowNet)",
        "description": "Samples space group, charge-neutral composition and lattice in "
        "proportion to exp(-beta E_form) of a position-free proxy, then places the atoms with "
        "the Wyckoff generator; trains a GFlowNet for the request (or uses a pretrained one).",
        "value": {
            "method": "crystal_gfn",
            "objectives": [{"property": "formation_energy", "goal": "below", "value": -2.0}],
            "constraints": {"elements": {"allowed": ["Li", "Mg", "O", "F"]}, "max_atoms": 12},
            "num_candidates": 8,
            "relax": False,
            "seed": 0,
            "params": {"steps": 300},
        },
    },
    "matinvent": {
        "summary": "matinvent: wide-gap crystals (3 ± 0.25 eV) within 512 oracle calls",
        "description": "Reinforcement-learning fine-tuning of the template policy toward the "
        "objective; the job ends at the oracle-call budget or at num_candidates hits. Needs "
        "its trained weights (matinvent-prior.pt, conditional-wyckoff.pt).",
        "value": {
            "method": "matinvent",
            "objectives": [
                {"property": "band_gap", "goal": "target", "value": 3.0, "tolerance": 0.25}
            ],
            "constraints": {"max_atoms": 20},
            "num_candidates": 64,
            "relax": False,
            "seed": 0,
            "params": {"oracle_call_budget": 512, "batch_size": 64},
        },
    },
}


def request_examples() -> dict[str, dict[str, Any]]:
    """Examples of the methods installed here, in the registry's order."""
    return {name: EXAMPLES[name] for name in method_names() if name in EXAMPLES}
