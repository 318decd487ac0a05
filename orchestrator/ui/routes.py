"""Serves the dashboard (docs/dashboard.md): four pages over the REST API, drawn by plotly.js,
and the sign-in page (`/signin`, `static/signin.html`: docs/security.md).

Pages: `/` (runs), `/runs/{id}` (a run), `/comparisons` and `/comparisons/{id}`, `/plan`. Each is
the shared shell (`static/shell.html`: nav, the reconnecting banner, the scripts) around the
page's own skeleton (`static/<page>.html`); the page's ES module (`static/<page>.js`) fills it
from `/api/v1`. Assets are `/ui/<name>`; plotly.js is `/ui/vendor/plotly-basic.min.js`, the
basic bundle (scatter, bar, pie) checked in under `static/vendor/` (its README says where it came
from), so the dashboard needs no CDN and works offline.

Our own files are small and read once at import. They are served with `no-cache` and an ETag
(the browser revalidates each load and gets a 304: an upgraded service is never shown with stale
scripts). plotly.js is 1.2 MB: its URL carries its version and a hash of the file, so it is
cached for a year, and it is gzipped once, at import, to 0.4 MB (GZipMiddleware leaves a
response that is already encoded alone). Each page preloads plotly.js and its own modules (`modulepreload`, found from
the modules' imports), so they download in parallel rather than one import after another.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = STATIC / "vendor" / "plotly-basic.min.js"

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

# A favicon of our own, so no page asks for a missing /favicon.ico (a console error otherwise).
_FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#1d3557"/>'
    '<path d="M3 12 L6 7 L9 9 L13 4" stroke="#a8dadc" stroke-width="2" fill="none"/></svg>'
)


def _read_plotly() -> bytes | None:
    try:
        return PLOTLY_JS.read_bytes()
    except OSError:  # a broken install: the pages load without their charts, the URL answers 404
        return None


def _plotly_version(data: bytes | None) -> str:
    """`4.1.1-99784e3a`: the version in the bundle's licence header and the start of its sha256
    (a file swapped for another is a new URL, so no browser keeps the old one)."""
    if data is None:
        return "missing"
    found = re.search(rb"plotly\.js[^\n]*? v(\d+\.\d+\.\d+)", data[:400])
    name = found.group(1).decode() if found else "unknown"
    return f"{name}-{hashlib.sha256(data).hexdigest()[:8]}"


# read and gzipped at import (about 50 ms, once per service), so no page's request waits for it
_PLOTLY_PLAIN = _read_plotly()
_PLOTLY_GZIP = None if _PLOTLY_PLAIN is None else gzip.compress(_PLOTLY_PLAIN, compresslevel=9, mtime=0)
PLOTLY_VERSION = _plotly_version(_PLOTLY_PLAIN)
PLOTLY_URL = f"/ui/vendor/plotly-basic.min.js?v={PLOTLY_VERSION}"
_IMPORT = re.compile(r"""^import\s[^;]*?\sfrom\s+"/ui/([\w.-]+\.js)";""", re.MULTILINE | re.DOTALL)


def _etag(body: str | bytes) -> str:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


def _imports(module: str) -> list[str]:
    """Every module `module` imports, directly or not (`import ... from "/ui/<name>.js";`)."""
    found: list[str] = []
    todo = [module]
    while todo:
        text = (STATIC / todo.pop()).read_text(encoding="utf-8")
        for name in _IMPORT.findall(text):
            if name not in found and name != module:
                found.append(name)
                todo.append(name)
    return found


def _page(name: str, title: str) -> str:
    shell = (STATIC / "shell.html").read_text(encoding="utf-8")
    main = (STATIC / f"{name}.html").read_text(encoding="utf-8")
    # the page's module imports these; preloaded, they all download at once
    preload = "\n".join(f'  <link rel="modulepreload" href="/ui/{m}">' for m in _imports(f"{name}.js"))
    return (
        shell.replace("{{title}}", title)
        .replace("{{page}}", name)
        .replace("{{main}}", main)
        .replace("{{plotly_url}}", PLOTLY_URL)
        .replace("{{modulepreload}}", preload)
    )


_PAGES = {
    "runs": _page("runs", "runs · trainyard"),
    "run": _page("run", "run · trainyard"),
    "comparisons": _page("comparisons", "comparisons · trainyard"),
    "plan": _page("plan", "plan · trainyard"),
}
_SIGNIN = (STATIC / "signin.html").read_text(encoding="utf-8")
_ASSETS: dict[str, tuple[str, str, str]] = {
    path.name: (body, _TYPES[path.suffix], _etag(body))
    for path in sorted(STATIC.iterdir())
    if path.suffix in _TYPES
    for body in [path.read_text(encoding="utf-8")]
}
_ASSETS["favicon.svg"] = (_FAVICON, "image/svg+xml", _etag(_FAVICON))

router = APIRouter(include_in_schema=False)


def _html(page: str) -> HTMLResponse:
    # pages are cheap and change with the service: always revalidated
    return HTMLResponse(_PAGES[page], headers={"Cache-Control": "no-cache"})


@router.get("/", response_class=HTMLResponse)
def runs_page() -> HTMLResponse:
    return _html("runs")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str) -> HTMLResponse:  # noqa: ARG001 - the script reads the id from the path
    return _html("run")


@router.get("/comparisons", response_class=HTMLResponse)
def comparisons_page() -> HTMLResponse:
    return _html("comparisons")


@router.get("/comparisons/{comparison_id}", response_class=HTMLResponse)
def comparison_page(comparison_id: str) -> HTMLResponse:  # noqa: ARG001 - read from the path
    return _html("comparisons")


@router.get("/plan", response_class=HTMLResponse)
def plan_page() -> HTMLResponse:
    return _html("plan")


@router.get("/signin", response_class=HTMLResponse)
def signin_page() -> HTMLResponse:
    return HTMLResponse(_SIGNIN, headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon() -> Response:
    return asset_response("favicon.svg", None)


def asset_response(name: str, if_none_match: str | None) -> Response:
    if name not in _ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media_type, etag = _ASSETS[name]
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@router.get("/ui/vendor/plotly-basic.min.js")
async def plotly_js(request: Request) -> Response:
    if _PLOTLY_PLAIN is None or _PLOTLY_GZIP is None:
        return Response(
            f"{PLOTLY_JS.name} not found in the installed package", status_code=404, media_type="text/plain"
        )
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": f'"plotly-{PLOTLY_VERSION}"'}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        encoded = {**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return Response(_PLOTLY_GZIP, media_type=_TYPES[".js"], headers=encoded)
    # plain: GZipMiddleware adds the Vary header to what it passes through
    return Response(_PLOTLY_PLAIN, media_type=_TYPES[".js"], headers=headers)


@router.get("/ui/{name}")
def asset(name: str, request: Request) -> Response:
    return asset_response(name, request.headers.get("if-none-match"))
