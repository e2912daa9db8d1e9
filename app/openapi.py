"""The OpenAPI schema, completed from what this server runs: the allowed values of
``method`` (in requests and the jobs list's filter), ``objectives[].property``,
``objectives[].fidelity`` and oracle names come from the registries, and the defaults of
``relax`` and ``num_candidates`` are this server's settings."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.settings import Settings

# FastAPI's own 422 models, which the schemas here do not define.
_BUILTIN_DESCRIPTIONS = {
    "HTTPValidationError": {"detail": "One entry per invalid field."},
    "ValidationError": {
        "loc": "Path of the offending field.",
        "msg": "What is wrong, in words.",
        "type": "Machine-readable error type.",
        "input": "The rejected value.",
        "ctx": "Details of the check that failed.",
    },
}


def _complete(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from ml.methods.registry import method_names
    from ml.oracles.registry import fidelities, list_oracles
    from ml.request import _known_properties

    comps = schema.get("components", {}).get("schemas", {})
    request = comps.get("DesignRequest", {}).get("properties", {})
    if "method" in request:
        request["method"]["enum"] = method_names()
    if "relax" in request:
        request["relax"]["default"] = settings.relax_default
    if "oversample" in request:
        request["oversample"]["default"] = settings.oversample_default(
            settings.num_candidates_default
        )
    if "num_candidates" in request:
        request["num_candidates"]["default"] = settings.num_candidates_default
        request["num_candidates"]["maximum"] = settings.max_candidates
    objective = comps.get("Objective", {}).get("properties", {})
    if "property" in objective:
        objective["property"]["enum"] = sorted(_known_properties())
    for variant in objective.get("fidelity", {}).get("anyOf", []):
        if "enum" in variant:
            variant["enum"] = fidelities("band_gap")
    for param in schema.get("paths", {}).get("/v1/jobs", {}).get("get", {}).get("parameters", []):
        if param.get("name") == "method" and param.get("in") == "query":
            for variant in param.get("schema", {}).get("anyOf", []):
                if variant.get("type") == "string":
                    variant["enum"] = method_names()
    oracles = comps.get("ScoreRequest", {}).get("properties", {}).get("oracles")
    if oracles is not None:
        names = [info.name for info in list_oracles()]
        for variant in oracles.get("anyOf", []):
            if variant.get("type") == "array":
                variant["items"] = {"type": "string", "enum": names}
    for name, fields in _BUILTIN_DESCRIPTIONS.items():
        props = comps.get(name, {}).get("properties", {})
        for field, text in fields.items():
            if field in props:
                props[field].setdefault("description", text)
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` return the completed schema (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _complete(schema, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
