"""Single structures, as JSON or CIF."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from app import jobs as jobs_service
from app.auth import current_owner
from app.errors import NotFound
from app.routes.deps import Services, services
from app.routes.responses import INVALID, KEYED, NOT_FOUND
from app.schemas import StructureOut
from app.serialize import structure_out

router = APIRouter(prefix="/v1/structures", tags=["structures"])

Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(services)]
StructureId = Annotated[str, Path(description="Structure id (UUID), from a job's structures.")]
_ERRORS: dict[int | str, dict[str, Any]] = {**KEYED, **NOT_FOUND, **INVALID}


# Declared before /{structure_id} so that "<id>.cif" is not taken for an id.
@router.get(
    "/{structure_id}.cif",
    response_class=Response,
    responses={**_ERRORS, 200: {"content": {"chemical/x-cif": {}}}},
    summary="CIF of a structure (relaxed=true: the relaxed geometry)",
)
def structure_cif(
    structure_id: StructureId,
    owner: Owner,
    svc: Svc,
    relaxed: Annotated[
        bool, Query(description="The CHGNet-relaxed geometry (404 when not relaxed).")
    ] = False,
) -> Response:
    row = jobs_service.get_structure(svc.db, owner, structure_id)
    text = row.relaxed_cif if relaxed else row.cif
    if text is None:
        raise NotFound(f"structure {structure_id} was not relaxed")
    name = f"{row.formula}_{row.id[:8]}{'_relaxed' if relaxed else ''}.cif"
    return Response(
        text,
        media_type="chemical/x-cif",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{structure_id}", response_model=StructureOut, responses=_ERRORS, summary="A structure"
)
def get_structure(structure_id: StructureId, owner: Owner, svc: Svc) -> dict[str, Any]:
    return structure_out(jobs_service.get_structure(svc.db, owner, structure_id))
