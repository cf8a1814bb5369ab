"""Demo handlers for `x402-resource-server serve`, matching examples/pricing.toml: the work being sold."""

from __future__ import annotations

import json
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route


async def weather(request: Request) -> Response:
    return JSONResponse(
        {"report": "sunny", "temperatureC": 21, "city": request.query_params.get("city", "Lisbon")}
    )


async def item(request: Request) -> Response:
    item_id = request.path_params["id"]
    return JSONResponse({"id": item_id, "name": f"Catalogue item {item_id}"})


async def render(request: Request) -> Response:
    try:
        params = json.loads(await request.body() or b"{}")
    except ValueError:
        return JSONResponse({"error": "the body must be JSON"}, status_code=400)
    return JSONResponse(
        {
            "renderId": uuid.uuid4().hex,
            "status": "rendered",
            "duration": params.get("duration"),
            "resolution": params.get("resolution", "720p"),
        }
    )


DEMO_ROUTES: list[BaseRoute] = [
    Route("/weather", weather, methods=["GET"]),
    Route("/items/{id}", item, methods=["GET"]),
    Route("/render", render, methods=["POST"]),
]
