"""The oracle registry: names, properties and units without loading any weights.

``get_oracle`` builds an oracle on first use and keeps it for the rest of the process, one
instance per (name, device), so model weights are read once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ml.oracles.base import Oracle, OracleInfo

__all__ = [
    "ORACLE_INFOS",
    "default_oracle_name",
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

# property -> {fidelity or None: default oracle name}
_DEFAULTS: dict[str, dict[str | None, str]] = {
    "formation_energy": {None: "chgnet-eform"},
    "band_gap": {None: "megnet-gap-pbe", **{f: f"megnet-gap-{f}" for f in GAP_FIDELITIES}},
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

    table: dict[str, Callable[[str], Oracle]] = {
        "chgnet-eform": chgnet_eform,
        "chgnet-energy": chgnet_energy,
        "megnet-eform": megnet("megnet-eform", _MEGNET_EFORM, None),
        "density": exact("density"),
        "tolerance-factor": exact("tolerance-factor"),
        "hhi": exact("hhi"),
    }
    for fid, level in GAP_FIDELITIES.items():
        table[f"megnet-gap-{fid}"] = megnet(f"megnet-gap-{fid}", _MEGNET_GAP, level)
    return table


_CACHE: dict[tuple[str, str], Oracle] = {}
_LOCK = threading.Lock()


def list_oracles() -> list[OracleInfo]:
    """Every registered oracle's description; loads no weights."""
    return list(ORACLE_INFOS.values())


def known_properties() -> list[str]:
    """Properties some oracle predicts (``formation_energy``, ``band_gap``, ...)."""
    return sorted({info.property for info in ORACLE_INFOS.values()})


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
