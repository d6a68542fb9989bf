"""The studio's web app (FastAPI): the page, its JSON API, and the guards a local web
server needs.

The page (`static/`) and the API talk only to `studio.analysis`, which reads the model
graph (no torch: the server answers within a second of starting). The guards: the
app answers only to loopback Host names (a web page elsewhere cannot reach it through DNS
rebinding), refuses foreign Origins and bodies over 1 MiB (declared or streamed), and runs
every analysis under the library's resource guard with a time limit.
"""

# No `from __future__ import annotations` here: FastAPI reads the request models from
# the endpoints' annotations at run time.

import json
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import analysis
from .workbench import Workbench, add_workbench

__all__ = ["ANALYSIS_TIMEOUT_S", "LOOPBACK_HOSTS", "MAX_BODY_BYTES", "create_app", "host_name"]

MAX_BODY_BYTES = 1 << 20
ANALYSIS_TIMEOUT_S = 20.0
MAX_RUNNING = 4
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        b"form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


# --------------------------------------------------------------------------- requests


class AnalyzeRequest(BaseModel):
    text: str
    input: str = Field("", description="B,T,C,H,W; blank: the spec's default input")


class CompareRequest(BaseModel):
    a: AnalyzeRequest
    b: AnalyzeRequest


class ExplainRequest(BaseModel):
    text: str
    stage: str


class TextRequest(BaseModel):
    text: str


# --------------------------------------------------------------------------- guards


def host_name(value: str) -> str | None:
    """The host of a Host header or an Origin's authority, lower-case, without the port
    or IPv6 brackets ("[::1]:8765" -> "::1"); None when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not _is_port(value[end + 1 :])):
            return None
        return value[1:end]
    name, colon, port = value.rpartition(":")
    if colon and _is_port(":" + port):
        value = name
    return value if value and ":" not in value else None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and 2 <= len(text) <= 6


class _Guard:
    """ASGI middleware: Host and Origin checks, the body limit (declared and streamed),
    and security headers on every response."""

    def __init__(self, app: Any, allowed_hosts: Iterable[str], max_body: int) -> None:
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if host_name(headers.get("host", "")) not in self.allowed:
            shown = headers.get("host", "(none)")
            await _refuse(send, 403, "this studio answers only to requests for "
                          + ", ".join(sorted(self.allowed)) + f" (Host header {shown!r}); "
                          "open it with the address `stcnnt studio` printed")  # fmt: skip
            return
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            _, _, authority = origin.partition("://")
            if host_name(authority) not in self.allowed:
                await _refuse(send, 403, f"cross-origin request from {origin!r} refused")
                return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _refuse(send, 413, self._too_large())
            return
        body_receive = receive
        if scope["method"] in ("POST", "PUT", "PATCH"):
            chunks, size = [], 0
            while True:  # read the body here, counting: a chunked upload has no length
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await _refuse(send, 413, self._too_large())
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body_receive = _replay(b"".join(chunks), receive)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [h for h in _SECURITY_HEADERS if h[0] not in dict(message["headers"])]
                message = {**message, "headers": [*message["headers"], *extra]}
            await send(message)

        await self.app(scope, body_receive, send_with_headers)

    def _too_large(self) -> str:
        return (
            f"the request body is over {self.max_body // 1024} KiB; an architecture is a few "
            "lines of text"
        )


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"ok": False, "error": {"message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *_SECURITY_HEADERS],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class _Runner:
    """Runs analyses in daemon threads, at most `slots` at once, each with a time limit.

    A thread past its limit cannot be stopped: it keeps its slot until it ends (so
    runaway analyses cannot pile up) and its request is answered with an error.
    """

    def __init__(self, timeout: float, slots: int) -> None:
        self.timeout = timeout
        self.slots = threading.BoundedSemaphore(slots)
        self.threads: set[threading.Thread] = set()  # running now (the command waits at exit)

    def run(self, func: Callable[..., dict], *args: Any) -> dict:
        if not self.slots.acquire(timeout=self.timeout):
            return _failure(
                f"the studio is busy (every analysis slot was taken for {self.timeout:g} s); "
                "try again in a moment",
                "Busy",
            )
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = func(*args)
            except BaseException as err:  # reported below, in the request's thread
                box["error"] = err
            finally:
                self.threads.discard(threading.current_thread())
                self.slots.release()

        worker = threading.Thread(target=work, name="stcnnt-studio-analysis", daemon=True)
        self.threads.add(worker)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            return _failure(
                f"the analysis took longer than {self.timeout:g} s and was abandoned; the "
                "spec is probably very large (many stages or cells): make it smaller",
                "TimeLimit",
            )
        if "error" in box:
            err = box["error"]
            if isinstance(err, analysis.STCNNTError):
                return _without_analysis(analysis.error_document(err))
            traceback.print_exception(err, file=sys.stderr)
            return _failure(
                "internal error (a bug in stcnnt-dsl, not in your text): "
                f"{type(err).__name__}: {err}; the server's terminal shows the traceback",
                "InternalError",
            )
        return box["value"]


def _failure(message: str, kind: str) -> dict:
    return _without_analysis(
        {"message": message, "line": None, "column": None, "path": "", "type": kind}
    )


def _without_analysis(error: dict) -> dict:
    """An answer with an error and no analysis, with the keys of one (the page reads them)."""
    empty = dict.fromkeys(("params", "flops", "activation_bytes", "output", "svg"))
    return {"ok": False, "error": error, **empty, "stages": []}


# --------------------------------------------------------------------------- the app


def _bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A body the endpoint cannot read (not JSON, a field missing or of the wrong type):
    the documented error shape, not FastAPI's `{"detail": ...}`."""
    problems = []
    for item in err.errors():
        if item.get("type") == "json_invalid":
            problems.append("it is not valid JSON")
            continue
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        problems.append(f"{where or 'the body'}: {item.get('msg', 'invalid')}")
    message = (
        f"the request body of {request.url.path} is not what it takes ("
        + "; ".join(problems[:5])
        + "); docs/studio.md (The API) gives each endpoint's body"
    )
    return _error_response(message, "BadRequest", 422)


def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """An unknown route or bundled name (404), a wrong method (405): the same shape."""
    return _error_response(str(err.detail), "HTTPError", err.status_code)


def _error_response(message: str, kind: str, status: int) -> JSONResponse:
    error = {"message": message, "line": None, "column": None, "path": "", "type": kind}
    return JSONResponse({"ok": False, "error": error}, status_code=status)


def _canonical(text: str) -> dict:
    try:
        yaml_text = analysis.canonical(text)
    except analysis.STCNNTError as err:
        return {"ok": False, "error": analysis.error_document(err, text)}
    name = analysis.load_text(text).spec.name
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return {"ok": True, "error": None, "yaml": yaml_text, "filename": f"{stem or 'spec'}.yaml"}


def create_app(
    *,
    initial: dict[str, Any] | None = None,
    allowed_hosts: Iterable[str] = (),
    timeout: float = ANALYSIS_TIMEOUT_S,
    max_running: int = MAX_RUNNING,
    max_body: int = MAX_BODY_BYTES,
    data: str | None = None,
    runs: str | None = None,
) -> FastAPI:
    """The studio's app. `initial`: {"name", "text"} the page opens with (the command
    line's ARCH); `allowed_hosts`: Host names it answers besides the loopback ones;
    `timeout`: seconds one analysis may take; `max_running`: analyses at once; `data`:
    the data set the page may read; `runs`: the folder its trainings write
    (`studio.workbench`)."""
    runner = _Runner(timeout, max_running)
    static = resources.files("stcnnt_dsl.studio") / "static"
    index_html = (static / "index.html").read_text(encoding="utf-8")
    app = FastAPI(title="stcnnt studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, allowed_hosts={*LOOPBACK_HOSTS, *allowed_hosts}, max_body=max_body)
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.state.runner = runner

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(index_html, headers={"cache-control": "no-store"})

    @app.get("/api/architectures")
    def architectures() -> dict:
        """The bundled architectures, and the text the page opens with (if any)."""
        start = None
        if initial is not None:
            start = {**initial, "input": analysis.default_input(initial["text"])}
        return {"architectures": analysis.architectures(), "initial": start}

    @app.get("/api/architectures/{name}")
    def bundled(name: str) -> dict:
        try:
            text = analysis.bundled_text(name)
        except analysis.STCNNTError as err:
            raise HTTPException(404, str(err)) from None
        return {"name": name, "text": text, "input": analysis.default_input(text)}

    @app.get("/api/schema")
    def schema() -> dict:
        return analysis.schema()

    @app.get("/api/topologies")
    def topologies() -> dict:
        """Every topology's name (the spec's top-level keys and expression names)."""
        return {"topologies": analysis.topologies()}

    @app.get("/api/cells")
    def cells() -> dict:
        """The options each cell token reads inline (completion inside `L1[...]`)."""
        return analysis.cell_options()

    @app.post("/api/analyze")
    def analyze(request: AnalyzeRequest) -> JSONResponse:
        return JSONResponse(runner.run(analysis.analyze, request.text, request.input))

    @app.post("/api/compare")
    def compare(request: CompareRequest) -> JSONResponse:
        a, b = request.a, request.b
        return JSONResponse(runner.run(analysis.compare, a.text, a.input, b.text, b.input))

    @app.post("/api/explain")
    def explain(request: ExplainRequest) -> JSONResponse:
        return JSONResponse(runner.run(analysis.explain_stage, request.text, request.stage))

    @app.post("/api/canonical")
    def canonical(request: TextRequest) -> JSONResponse:
        return JSONResponse(runner.run(_canonical, request.text))

    app.state.workbench = Workbench(data, runs)
    add_workbench(app, app.state.workbench)
    return app
