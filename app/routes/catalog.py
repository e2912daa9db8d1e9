"""What the server offers: methods, oracles, and synchronous scoring of uploaded CIFs."""

from __future__ import annotations

import logging
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from app.auth import current_owner
from app.errors import FieldError
from app.hygiene import check_storable
from app.routes.deps import Services, services
from app.routes.responses import INVALID, KEYED, UNPARSEABLE
from app.schemas import MethodOut, OracleOut, ScoreRequest, ScoreResponse
from app.scoring import ScoreInputError, ScorePool
from ml.methods.registry import get_method, method_names
from ml.oracles.registry import (
    NON_PBE_GAP_CAVEAT,
    default_oracle_name,
    known_properties,
    list_oracles,
)
from ml.request import Fidelity

router = APIRouter(prefix="/v1", tags=["catalog"])
log = logging.getLogger(__name__)

Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(services)]

# Default oracles of POST /v1/score when the body names none.
SCORE_DEFAULT_PROPERTIES = ("formation_energy", "band_gap", "density")
# The PBE gap that other MEGNet fidelities are compared with; gap-chgnet-ft is PBE too.
PBE_GAP_ORACLE = "megnet-gap-pbe"
PBE_GAP_ORACLES = frozenset({PBE_GAP_ORACLE, "gap-chgnet-ft"})
# A non-PBE gap this far below the PBE one is worth pointing out (metals sit at ~0 in both).
GAP_NOTE_MARGIN_EV = 0.05


@router.get(
    "/methods",
    response_model=list[MethodOut],
    responses=KEYED,
    summary="Design methods and parameters",
)
def methods(_: Owner) -> list[dict[str, Any]]:
    out = []
    for name in method_names():
        try:
            method = get_method(name)
        except Exception:  # a broken optional method must not take the catalogue down
            log.exception("method %s could not be loaded", name)
            continue
        described = method.describe()
        try:
            defaults = method.Params().model_dump(mode="json")
        except ValidationError:
            defaults = {}
        out.append(
            {
                "name": described.get("name", name),
                "version": described.get("version", ""),
                "description": described.get("description", ""),
                "params_schema": described.get("params_schema", {}),
                "defaults": defaults,
                "models": described.get("models", {}),
            }
        )
    return out


def _defaults() -> dict[str, list[str]]:
    """Oracle name -> the properties (and band-gap fidelities) it scores by default."""
    out: dict[str, list[str]] = {}
    for prop in known_properties():
        for fidelity in (None, *get_args(Fidelity)):
            try:
                name = default_oracle_name(prop, fidelity)
            except KeyError:
                continue
            label = prop if fidelity is None else f"{prop}[{fidelity}]"
            out.setdefault(name, []).append(label)
    return out


@router.get("/oracles", response_model=list[OracleOut], responses=KEYED, summary="Property oracles")
def oracles(_: Owner) -> list[dict[str, Any]]:
    defaults = _defaults()
    return [
        {
            "name": info.name,
            "property": info.property,
            "unit": info.unit,
            "model": info.model,
            "version": info.version,
            "reported_error": info.reported_error,
            "description": info.description,
            "default_for": defaults.get(info.name, []),
        }
        for info in list_oracles()
    ]


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses={
        **KEYED,
        **INVALID,
        **UNPARSEABLE,
    },
    summary="Score uploaded CIFs with chosen oracles (synchronous)",
    description="At most `MATDESIGN_SCORE_MAX_CIFS` (64) CIFs, "
    "`MATDESIGN_SCORE_MAX_ATOMS_PER_CIF` (500) atoms per CIF and "
    "`MATDESIGN_SCORE_MAX_ATOMS_PER_REQUEST` (2000) in all (422 naming the CIF). Runs in a "
    "separate process pool; 503 + Retry-After when the pool is busy or the request runs past "
    "`MATDESIGN_SCORE_TIMEOUT_S` (120 s).",
)
def score(body: ScoreRequest, request: Request, _: Owner, svc: Svc) -> dict[str, Any]:
    limit = svc.settings.score_max_cifs
    if len(body.cifs) > limit:
        raise FieldError(["body", "cifs"], f"at most {limit} CIFs per request")
    check_storable(body.model_dump(mode="python"))
    infos = {info.name for info in list_oracles()}
    names = body.oracles or [default_oracle_name(p) for p in SCORE_DEFAULT_PROPERTIES]
    for i, name in enumerate(names):
        if name not in infos:
            raise FieldError(
                ["body", "oracles", i], f"unknown oracle {name!r}; see GET /v1/oracles"
            )
    pool: ScorePool = request.app.state.score_pool
    try:
        items = pool.score(list(body.cifs), list(names))
    except ScoreInputError as exc:
        raise FieldError(exc.loc, exc.message) from None
    info_by_name = {info.name: info for info in list_oracles()}
    for item in items:
        _add_gap_notes(item["scores"], info_by_name)
    return {"items": items}


def _add_gap_notes(scores: dict[str, dict[str, Any]], infos: dict[str, Any]) -> None:
    """The fidelity caveat on every non-PBE band gap, saying so when it came out below the
    PBE gap scored alongside (HSE, GLLB-SC and SCAN gaps are larger than PBE's in DFT)."""
    pbe = scores.get(PBE_GAP_ORACLE, {}).get("value")
    for name, score in scores.items():
        info = infos[name]
        if info.property != "band_gap" or name in PBE_GAP_ORACLES:
            score.setdefault("note", None)
            continue
        note = NON_PBE_GAP_CAVEAT
        value = score["value"]
        if pbe is not None and value is not None and value < pbe - GAP_NOTE_MARGIN_EV:
            note = f"Below the PBE gap here ({value:.3f} < {pbe:.3f} eV). " + note
        score["note"] = note
