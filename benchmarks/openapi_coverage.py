"""Coverage of the OpenAPI schema: how many request/response fields and parameters carry a
description, how many carry a unit, and how many examples the schema holds.

    PYTHONPATH=. python benchmarks/openapi_coverage.py -v   # counts for this checkout's app
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

# A unit named in a description: eV, eV/atom, Å, g/cm^3, seconds, atoms, UTC times, or a
# value stated to have none (unitless, dimensionless, a count, a 0- or 1-based position).
_UNIT = re.compile(
    r"eV/atom|\beV\b|Å|g/cm\^3|\(s\)|\bseconds?\b|\batoms\b|\bUTC\b|unitless|dimensionless"
    r"|\bcount\b|\b[01]-based\b"
)


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, comp in schema.get("components", {}).get("schemas", {}).items():
        for field, spec in comp.get("properties", {}).items():
            out.append((f"{name}.{field}", spec))
    return out


def _parameters(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path, ops in schema.get("paths", {}).items():
        for verb, op in ops.items():
            for p in op.get("parameters", []):
                out.append((f"{verb.upper()} {path} {p['in']}.{p['name']}", p))
    return out


def _count_examples(node: Any) -> int:
    n = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "examples" and isinstance(value, dict | list):
                n += len(value)
            elif key == "example":
                n += 1
            else:
                n += _count_examples(value)
    elif isinstance(node, list):
        n += sum(_count_examples(v) for v in node)
    return n


def _has_enum(spec: Any) -> bool:
    """An enum on the field itself, its items, or a variant of its anyOf."""
    if isinstance(spec, dict):
        return "enum" in spec or any(_has_enum(spec.get(k)) for k in ("items", "anyOf"))
    if isinstance(spec, list):
        return any(_has_enum(v) for v in spec)
    return False


def _numeric(spec: Any) -> bool:
    """A number or integer field (or a nullable one); arrays and objects are not."""
    if not isinstance(spec, dict):
        return False
    return spec.get("type") in ("number", "integer") or any(
        _numeric(v) for v in spec.get("anyOf", [])
    )


def coverage(schema: dict[str, Any]) -> dict[str, Any]:
    fields = _properties(schema)
    numeric = [(n, s) for n, s in fields if _numeric(s)]
    params = _parameters(schema)
    described = [n for n, s in fields if s.get("description")]
    params_described = [n for n, p in params if p.get("description")]
    enums = [n for n, s in fields if _has_enum(s)]
    return {
        "fields": len(fields),
        "fields_described": len(described),
        "fields_with_unit": sum(1 for _, s in fields if _UNIT.search(s.get("description", ""))),
        "fields_with_enum": len(enums),
        "numeric_fields": len(numeric),
        "numeric_fields_with_unit": sum(
            1 for _, s in numeric if _UNIT.search(s.get("description", ""))
        ),
        "parameters": len(params),
        "parameters_described": len(params_described),
        "examples": _count_examples(schema),
        "undescribed": sorted(n for n, s in fields if not s.get("description"))
        + sorted(n for n, p in params if not p.get("description")),
        "numeric_without_unit": sorted(
            n for n, s in numeric if not _UNIT.search(s.get("description", ""))
        ),
    }


def main() -> int:
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(database_url="sqlite://", sweeper_enabled=False))
    cov = coverage(app.openapi())
    undescribed = cov.pop("undescribed")
    no_unit = cov.pop("numeric_without_unit")
    print(json.dumps(cov, indent=2))
    if "-v" in sys.argv:
        print("undescribed:", *undescribed, sep="\n  ")
        print("numeric without a unit:", *no_unit, sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
