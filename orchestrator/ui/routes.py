"""Serves the dashboard: `/` lists runs, `/runs/{id}` shows one run with its loss chart.

Both paths return the same page; its script reads the path and draws from `/api/v1`. Files are
read once at import: they are small and never change while the service runs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

STATIC = Path(__file__).parent / "static"
_PAGE = (STATIC / "index.html").read_text(encoding="utf-8")
_ASSETS = {
    "app.js": ((STATIC / "app.js").read_text(encoding="utf-8"), "text/javascript; charset=utf-8"),
    "style.css": ((STATIC / "style.css").read_text(encoding="utf-8"), "text/css; charset=utf-8"),
}

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def runs_page() -> HTMLResponse:
    return HTMLResponse(_PAGE)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str) -> HTMLResponse:  # noqa: ARG001 - the script reads the id from the path
    return HTMLResponse(_PAGE)


@router.get("/ui/{name}")
def asset(name: str) -> Response:
    if name not in _ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media_type = _ASSETS[name]
    return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=300"})
