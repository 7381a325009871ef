"""`GET /metrics`: the server's Prometheus metrics (reconciler.server.metrics).

Protected like every other read: a viewer token (Prometheus sends it with
`authorization: {credentials: <token>}` in its scrape config), on the API's own port, so there
is no second listener to secure.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from api.auth import Viewer, auth_responses
from api.deps import ControllerPort, get_controller
from reconciler.server.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={**auth_responses("viewer"),
               200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)  # fmt: skip
def metrics(
    _: Viewer, controller: Annotated[ControllerPort, Depends(get_controller)]
) -> Response:
    return Response(controller.metrics.render(), media_type=CONTENT_TYPE)
