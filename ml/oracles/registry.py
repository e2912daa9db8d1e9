"""The oracle registry: names, properties and units without loading any weights.

``get_oracle`` builds an oracle on first use and keeps it for the rest of the process, one
instance per (name, device), so model weights are read once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ml.oracles.base import Oracle, OracleInfo

__all__ = [
    "DEFAULT_STABILITY_ORACLE",
    "EFORM_OF_ENERGY",
    "ENERGY_MODEL_OF",
    "GPU_STABILITY_ORACLE",
    "ORACLE_INFOS",
    "default_oracle_name",
    "default_stability_oracle",
    "get_oracle",
    "known_properties",
    "list_oracles",
]

_MEGNET_EFORM = "MEGNet-MP-2018.6.1-Eform"
_MEGNET_GAP = "MEGNet-MP-2019.4.1-BandGap-mfi"
# Band-gap fidelities of the multi-fidelity MEGNet: its integer state attribute.
GAP_FIDELITIES: dict[str, int] = {"pbe": 0, "gllb_sc": 1, "hse": 2, "scan": 3}

ORACLE_INFOS: dict[str, OracleInfo] = {
    "chgnet-eform": OracleInfo(
        name="chgnet-eform",
        property="formation_energy",
        unit="eV/atom",
        model="CHGNet",
        version="0.3.0",
        reported_error="MAE 0.036 eV/atom, R2 0.998 vs DFT on all 9,046 MP-20 test structures",
        description="CHGNet 0.3.0 energy per atom minus composition-weighted elemental "
        "references (lowest CHGNet energy of relaxed elemental structures).",
    ),
    "megnet-eform": OracleInfo(
        name="megnet-eform",
        property="formation_energy",
        unit="eV/atom",
        model=_MEGNET_EFORM,
        version="matgl 4.1.2 checkpoint MEGNet-MP-2018.6.1-Eform",
        reported_error="MAE 0.269 eV/atom, R2 0.889 vs DFT on 9,046 MP-20 test (MP2020-corrected "
        "labels; 123 unscored: an atom beyond the 4 A cutoff)",
        description="MEGNet formation energy trained on Materials Project 2018.",
    ),
    "chgnet-energy": OracleInfo(
        name="chgnet-energy",
        property="energy",
        unit="eV/atom",
        model="CHGNet",
        version="0.3.0",
        reported_error=None,
        description="CHGNet 0.3.0 total energy per atom at the given geometry (no relaxation).",
    ),
    "density": OracleInfo(
        name="density",
        property="density",
        unit="g/cm^3",
        model="pymatgen",
        version="exact",
        reported_error="exact",
        description="Mass density of the cell.",
    ),
    "tolerance-factor": OracleInfo(
        name="tolerance-factor",
        property="tolerance_factor",
        unit="dimensionless",
        model="pymatgen Shannon/ionic radii",
        version="exact",
        reported_error="exact given the oxidation-state guess",
        description="Goldschmidt (r_A + r_X) / (sqrt(2) (r_B + r_X)) from oxidation-state "
        "guesses; NaN unless the composition is ABX3-like.",
    ),
    "hhi": OracleInfo(
        name="hhi",
        property="hhi",
        unit="dimensionless",
        model="pymatgen HHI data",
        version="exact",
        reported_error="exact",
        description="Herfindahl-Hirschman index of element production (supply risk), "
        "composition-weighted by mass as in pymatgen's HHIModel.",
    ),
}
# What a scientist must know before reading a non-PBE gap (shown by GET /v1/oracles and with
# every such score of POST /v1/score). Training counts: Chen et al., Nat. Comput. Sci. 2021.
NON_PBE_GAP_CAVEAT = (
    "Predicted by the multi-fidelity MEGNet model, trained on about 52,000 PBE gaps but only "
    "about 6,000 HSE, 2,300 GLLB-SC and 500 SCAN gaps; its error at this fidelity is not "
    "measured here. Unlike DFT, it can put the gap below the PBE gap of the same structure: "
    "compare with megnet-gap-pbe and read it as indicative."
)

# The gap oracles whose values carry NON_PBE_GAP_CAVEAT wherever they are shown.
NON_PBE_GAP_ORACLES = frozenset(f"megnet-gap-{f}" for f in GAP_FIDELITIES if f != "pbe")

for _fid, _level in GAP_FIDELITIES.items():
    _name = f"megnet-gap-{_fid}"
    ORACLE_INFOS[_name] = OracleInfo(
        name=_name,
        property="band_gap",
        unit="eV",
        model=_MEGNET_GAP,
        version=f"matgl 4.1.2 checkpoint {_MEGNET_GAP}, fidelity {_level} ({_fid})",
        reported_error=(
            "MAE 0.549 eV, R2 0.389 vs DFT PBE gaps on 9,046 MP-20 test (underestimates)"
            if _fid == "pbe"
            else None
        ),
        description=f"Multi-fidelity MEGNet band gap at the {_fid.upper()} fidelity."
        + ("" if _fid == "pbe" else " " + NON_PBE_GAP_CAVEAT),
    )

_SEVENNET = {
    "sevennet-l3i5": (
        "SevenNet-l3i5",
        "Matbench Discovery F1 0.76, MAE 0.044 eV/atom (its authors' figures)",
    ),
    "sevennet-0": ("SevenNet-0 (11Jul2024)", "Matbench Discovery F1 0.72, MAE 0.048 eV/atom"),
}
for _model, (_label, _err) in _SEVENNET.items():
    ORACLE_INFOS[f"{_model}-energy"] = OracleInfo(
        name=f"{_model}-energy",
        property="energy",
        unit="eV/atom",
        model=_label,
        version="sevenn 0.13.0 bundled checkpoint",
        reported_error=_err,
        description=f"{_label} total energy per atom at the given geometry (no relaxation); "
        "as the stability judge it also relaxes candidates and gives E_hull against its own "
        "relaxed reference hull.",
    )
    ORACLE_INFOS[f"{_model}-eform"] = OracleInfo(
        name=f"{_model}-eform",
        property="formation_energy",
        unit="eV/atom",
        model=_label,
        version="sevenn 0.13.0 bundled checkpoint",
        reported_error="MP-20 test MAE 0.022 (l3i5) / 0.026 (SevenNet-0) eV/atom with MP2020 "
        "corrections; Cr and Cs have no elemental reference yet (unscored)",
        description=f"{_label} energy per atom minus composition-weighted elemental references "
        "(lowest energy of its relaxed elemental structures).",
    )
ORACLE_INFOS["gap-chgnet-ft"] = OracleInfo(
    name="gap-chgnet-ft",
    property="band_gap",
    unit="eV",
    model="CHGNet 0.3.0 backbone (frozen) + heads trained on MP-20 train + val DFT-PBE gaps",
    version="ml/weights/bandgap_chgnet.pt (model card bandgap_chgnet.md)",
    reported_error="MAE 0.193 eV, R2 0.880, metal/non-metal accuracy 0.913 vs DFT PBE gaps on "
    "all 9,046 MP-20 test (model card ml/weights/bandgap_chgnet.md)",
    description="PBE band gap: metal/non-metal head plus a softplus gap head; never negative.",
)

# Energy oracles -> the energy model behind them (relaxation and hull use the same model).
ENERGY_MODEL_OF: dict[str, str] = {
    "chgnet-energy": "chgnet",
    "chgnet-eform": "chgnet",
    "sevennet-l3i5-energy": "sevennet-l3i5",
    "sevennet-l3i5-eform": "sevennet-l3i5",
    "sevennet-0-energy": "sevennet-0",
    "sevennet-0-eform": "sevennet-0",
}
# The judge of relaxation and energy above hull unless a request names another energy oracle.
# CHGNet until SevenNet-l3i5's full relaxed-reference hull table is built (a GPU run of
# ml/tools/build_hull_tables.py); SevenNet is selectable by name for energies and formation
# energies already.
DEFAULT_STABILITY_ORACLE = "chgnet-energy"
# On a GPU SevenNet-l3i5 judges instead: more accurate (on-hull F1 0.840 vs 0.798, Eform MAE
# 0.022 vs 0.036 eV/atom on MP-20 test) and, batched on an H200, faster than CHGNet (752 vs 150
# structures/s, 17.9 vs 4.8 relaxations/s). On a CPU it is ~85x slower (1.7 structures/s).
GPU_STABILITY_ORACLE = "sevennet-l3i5-energy"
# The formation-energy oracle computed from an energy oracle's own energies.
EFORM_OF_ENERGY: dict[str, str] = {
    "chgnet-energy": "chgnet-eform",
    "sevennet-l3i5-energy": "sevennet-l3i5-eform",
    "sevennet-0-energy": "sevennet-0-eform",
}

# property -> {fidelity or None: default oracle name}
_DEFAULTS: dict[str, dict[str | None, str]] = {
    "formation_energy": {None: "chgnet-eform"},
    "band_gap": {
        None: "gap-chgnet-ft",
        **{f: f"megnet-gap-{f}" for f in GAP_FIDELITIES},
        "pbe": "gap-chgnet-ft",
    },
    "energy": {None: "chgnet-energy"},
    "density": {None: "density"},
    "tolerance_factor": {None: "tolerance-factor"},
    "hhi": {None: "hhi"},
}


def _factories() -> dict[str, Callable[[str], Oracle]]:
    # Imported lazily so that listing oracles never imports matgl or chgnet.
    def chgnet_eform(device: str) -> Oracle:
        from ml.oracles.chgnet import ChgnetEformOracle

        return ChgnetEformOracle(ORACLE_INFOS["chgnet-eform"], device)

    def chgnet_energy(device: str) -> Oracle:
        from ml.oracles.chgnet import ChgnetEnergyOracle

        return ChgnetEnergyOracle(ORACLE_INFOS["chgnet-energy"], device)

    def megnet(name: str, model_dir: str, state: int | None) -> Callable[[str], Oracle]:
        def make(device: str) -> Oracle:
            from ml.oracles.megnet import MegnetOracle

            return MegnetOracle(ORACLE_INFOS[name], model_dir, device, state=state)

        return make

    def exact(name: str) -> Callable[[str], Oracle]:
        def make(device: str) -> Oracle:
            from ml.oracles import exact as ex

            cls = {
                "density": ex.DensityOracle,
                "tolerance-factor": ex.ToleranceFactorOracle,
                "hhi": ex.HHIOracle,
            }[name]
            return cls(ORACLE_INFOS[name])

        return make

    def sevennet(name: str, model: str) -> Callable[[str], Oracle]:
        def make(device: str) -> Oracle:
            from ml.oracles import sevennet as sn

            cls = sn.SevennetEformOracle if name.endswith("-eform") else sn.SevennetEnergyOracle
            return cls(ORACLE_INFOS[name], model, device)

        return make

    def trained_gap(device: str) -> Oracle:
        from ml.oracles.gap import TrainedGapOracle

        return TrainedGapOracle(ORACLE_INFOS["gap-chgnet-ft"], device)

    table: dict[str, Callable[[str], Oracle]] = {
        "gap-chgnet-ft": trained_gap,
        "chgnet-eform": chgnet_eform,
        "chgnet-energy": chgnet_energy,
        "megnet-eform": megnet("megnet-eform", _MEGNET_EFORM, None),
        "density": exact("density"),
        "tolerance-factor": exact("tolerance-factor"),
        "hhi": exact("hhi"),
    }
    for fid, level in GAP_FIDELITIES.items():
        table[f"megnet-gap-{fid}"] = megnet(f"megnet-gap-{fid}", _MEGNET_GAP, level)
    for model in _SEVENNET:
        for kind in ("energy", "eform"):
            table[f"{model}-{kind}"] = sevennet(f"{model}-{kind}", model)
    return table


_CACHE: dict[tuple[str, str], Oracle] = {}
_LOCK = threading.Lock()


def list_oracles() -> list[OracleInfo]:
    """Every registered oracle's description; loads no weights."""
    return list(ORACLE_INFOS.values())


def known_properties() -> list[str]:
    """Properties some oracle predicts (``formation_energy``, ``band_gap``, ...)."""
    return sorted({info.property for info in ORACLE_INFOS.values()})


def fidelities(property: str = "band_gap") -> list[str]:
    """The DFT fidelities a request may ask of ``property`` (each has a default oracle)."""
    return [f for f in _DEFAULTS.get(property, {}) if f is not None]


def default_oracle_name(property: str, fidelity: str | None = None) -> str:
    """The oracle used for ``property`` when a request names none.

    Raises ``KeyError`` naming the property (or fidelity) when there is no such oracle.
    """
    if property not in _DEFAULTS:
        raise KeyError(f"no oracle for property {property!r}; known: {known_properties()}")
    by_fidelity = _DEFAULTS[property]
    key = fidelity.lower() if fidelity is not None else None
    if key not in by_fidelity:
        allowed = sorted(k for k in by_fidelity if k is not None)
        raise KeyError(f"property {property!r} has no fidelity {fidelity!r}; known: {allowed}")
    return by_fidelity[key]


def default_stability_oracle(device: str | None = None) -> str:
    """The energy oracle that relaxes and judges E_hull when a request names none: SevenNet-l3i5
    on a CUDA device (once its hull table exists), CHGNet elsewhere."""
    if _resolve_device(device).startswith("cuda"):
        from ml.evaluation.hull import hull_available

        if hull_available(ENERGY_MODEL_OF[GPU_STABILITY_ORACLE]):
            return GPU_STABILITY_ORACLE
    return DEFAULT_STABILITY_ORACLE


def _resolve_device(device: str | None) -> str:
    if device is not None:
        return device
    from ml.settings import get_ml_settings

    return get_ml_settings().torch_device()


def get_oracle(name: str, device: str | None = None) -> Oracle:
    """The oracle called ``name`` on ``device`` (default: the settings' device).

    Built once per process and device; raises ``KeyError`` for an unknown name.
    """
    if name not in ORACLE_INFOS:
        raise KeyError(f"unknown oracle {name!r}; known: {sorted(ORACLE_INFOS)}")
    dev = _resolve_device(device)
    key = (name, dev)
    with _LOCK:
        oracle = _CACHE.get(key)
        if oracle is None:
            oracle = _factories()[name](dev)
            _CACHE[key] = oracle
        return oracle


def check_oracle_choice(key: str, name: str) -> str:
    """Validate a request's ``oracles[key] = name``: ``key`` is a property or
    ``energy_above_hull`` (judged by an energy oracle); raises ValueError saying why not."""
    if name not in ORACLE_INFOS:
        raise ValueError(f"unknown oracle {name!r}; known: {sorted(ORACLE_INFOS)}")
    if key == "energy_above_hull":
        if ORACLE_INFOS[name].property != "energy" or name not in ENERGY_MODEL_OF:
            judges = sorted(n for n, i in ORACLE_INFOS.items() if i.property == "energy")
            raise ValueError(f"energy_above_hull is judged by an energy oracle: one of {judges}")
        from ml.evaluation.hull import hull_available

        if not hull_available(ENERGY_MODEL_OF[name]):
            raise ValueError(
                f"{name} has no reference hull on this server yet "
                f"(ml/tools/build_hull_tables.py --model {ENERGY_MODEL_OF[name]})"
            )
        return name
    if key not in _DEFAULTS:
        raise ValueError(
            f"unknown property {key!r}; known: {[*known_properties(), 'energy_above_hull']}"
        )
    if ORACLE_INFOS[name].property != key:
        raise ValueError(f"oracle {name!r} predicts {ORACLE_INFOS[name].property}, not {key}")
    return name
