"""The page's data, training, prediction and export API (`/api/data...`, `/api/runs...`).

Requests name a case by its index and a run by its name; files are only ever opened
through `folders.Folder` (`--data` read, `--runs` written). A user's mistake answers 400
with `{"ok": false, "error": {"message"}}`, which the page shows where it happened.
"""

# No `from __future__ import annotations`: FastAPI reads the request models at run time.

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from ..errors import STCNNTError
from . import recipes
from .data_view import DataView
from .folders import Folder
from .predictions import Predictions
from .runs import Runs

__all__ = ["Workbench", "add_workbench"]

NO_RUNS = (
    "no runs folder: start the studio with --runs DIR to train (with --data alone, runs go "
    "to ./stcnnt-runs)"
)
PNG_HEADERS = {"cache-control": "private, max-age=600"}


class StartRequest(BaseModel):
    spec: str | None = None  # the editor's text; None: the plan's choice
    memory: str | None = None  # the plan's memory budget, e.g. "4GiB"; None: free memory
    steps: int | None = None
    name: str | None = None
    init: str | None = None  # a run whose best (or last) checkpoint to start from
    adapt: str = "full"  # full | lora | frozen (with init)
    alongside: bool = False


class ResumeRequest(BaseModel):
    alongside: bool = False


class Workbench:
    """The data view, the runs, their predictions and exports, for one studio."""

    def __init__(
        self,
        data: str | Path | None,
        runs: str | Path | None,
        *,
        parallel: int = 1,
    ) -> None:
        self.data = None if data is None else Folder(data, what="--data")
        self.view = DataView(self.data)
        self.runs_folder = None if runs is None else Folder(runs, what="--runs")
        self.runs = None if self.runs_folder is None else Runs(self.runs_folder, parallel=parallel)
        self.predictions = Predictions(self.view)

    def _runs(self) -> Runs:
        if self.runs is None:
            raise STCNNTError(NO_RUNS)
        return self.runs

    def start(self, request: StartRequest) -> dict[str, Any]:
        runs = self._runs()
        dataset = self.view.dataset
        init = None
        if request.init:
            init = runs.file(
                request.init,
                "best.safetensors"
                if runs.status(request.init)["checkpoints"]["best"]
                else "last.safetensors",
            )
        choice = recipes.compose(
            dataset,
            self.view.fingerprint,
            spec_text=request.spec,
            memory=request.memory,
            steps=request.steps,
            init=init,
            adapt=request.adapt,
        )
        return runs.start(
            choice.recipe,
            name=request.name,
            alongside=request.alongside,
            need_bytes=choice.need_bytes,
            info=choice.info,
        )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": {"message": message}}, status_code=status)


def add_workbench(app: FastAPI, bench: Workbench) -> None:
    """Add the data, run, prediction and export routes to the studio's app."""
    router = APIRouter(prefix="/api")

    @app.exception_handler(STCNNTError)
    async def user_error(request: Request, err: STCNNTError) -> JSONResponse:
        return _error(400, str(err))

    # ------------------------------------------------------------------ data

    @router.get("/data")
    def data_summary() -> dict:
        return {
            **bench.view.summary(),
            "runs": None if bench.runs_folder is None else str(bench.runs_folder.given),
        }

    @router.get("/data/cases/{index}")
    def case(index: int) -> dict:
        return bench.view.case(index)

    @router.get("/data/cases/{index}/image/{t}.png")
    def image(
        index: int, t: int, c: int = 0, low: float | None = None, high: float | None = None
    ) -> Response:
        return Response(
            bench.view.frame(index, t, c, low, high), media_type="image/png", headers=PNG_HEADERS
        )

    @router.get("/data/cases/{index}/label/{t}.png")
    def label(index: int, t: int) -> Response:
        return Response(bench.view.label(index, t), media_type="image/png", headers=PNG_HEADERS)

    # ------------------------------------------------------------------ runs

    @router.get("/runs")
    def runs() -> dict:
        if bench.runs is None:  # the page says so where training is
            return {"runs": [], "parallel": 0, "error": {"message": NO_RUNS}}
        runs = bench.runs
        return {
            "runs": [runs.status(n) for n in runs.names()],
            "parallel": runs.parallel,
            "error": None,
        }

    @router.post("/runs")
    def start(request: StartRequest) -> dict:
        return bench.start(request)

    @router.get("/runs/{name}")
    def run(name: str) -> dict:
        runs = bench._runs()
        return {**runs.status(name), "metrics": runs.metrics(name)}

    @router.post("/runs/{name}/stop")
    def stop(name: str) -> dict:
        return bench._runs().stop(name)

    @router.post("/runs/{name}/resume")
    def resume(name: str, request: ResumeRequest) -> dict:
        return bench._runs().resume(name, alongside=request.alongside)

    # ------------------------------------------------------------------ predictions, export

    @router.get("/runs/{name}/predictions")
    def predictions(name: str) -> dict:
        return bench.predictions.of(bench._runs(), name)

    @router.get("/runs/{name}/predictions/{index}/{t}.png")
    def prediction_image(name: str, index: int, t: int) -> Response:
        png = bench.predictions.image(bench._runs(), name, index, t)
        return Response(png, media_type="image/png", headers={"cache-control": "no-store"})

    @router.get("/runs/{name}/model.safetensors")
    def weights(name: str) -> FileResponse:
        runs = bench._runs()
        best = runs.status(name)["checkpoints"]["best"]
        path = runs.file(name, "best.safetensors" if best else "last.safetensors")
        return FileResponse(
            path, filename=f"{name}.safetensors", media_type="application/octet-stream"
        )

    @router.get("/runs/{name}/model.onnx")
    def onnx(name: str) -> FileResponse:
        path = bench.predictions.export(bench._runs(), name)
        return FileResponse(path, filename=f"{name}.onnx", media_type="application/octet-stream")

    app.include_router(router)
