"""Method registry: names to classes, imported lazily so the API starts without torch models."""

from __future__ import annotations

import importlib
from functools import cache

from ml.methods.base import DesignMethod

_METHODS: dict[str, str] = {
    "substitution": "ml.methods.substitution:SubstitutionMethod",
    "smoacs": "ml.methods.smoacs.method:SmoacsMethod",
    "cliqueflowmer": "ml.methods.cliqueflowmer.method:CliqueFlowmerMethod",
    "conditional": "ml.methods.conditional.method:ConditionalMethod",
    "crystal_gfn": "ml.methods.crystal_gfn.method:CrystalGFNMethod",
    "matinvent": "ml.methods.matinvent.method:MatInventMethod",
}


def method_names() -> list[str]:
    return [n for n in _METHODS if _importable(n)]


def _importable(name: str) -> bool:
    module, _, _ = _METHODS[name].partition(":")
    return importlib.util.find_spec(module) is not None


@cache
def get_method(name: str) -> DesignMethod:
    if name not in _METHODS or not _importable(name):
        raise KeyError(name)
    module, _, cls = _METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
