"""Training runs started from the page, each in its own process, kept in `--runs`.

A run is a folder `RUNS/NAME/` holding what `stcnnt train` writes (`metrics.csv`,
`last.safetensors`, `best.safetensors`, the resolved `recipe.yaml`), the recipe the page
asked for (`studio-recipe.yaml`), the process's
output (`train.log`), `studio.json` (written here when it starts: process id, steps) and
`exit.json` (written by `studio.worker` when it ends: finished, failed with its message,
or stopped). Everything the page shows is read back from these files, so a run outlives
the page and the server: a restarted studio finds it running (or ended) as it left it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import STCNNTError
from .folders import Folder, run_name

__all__ = ["Runs", "available_memory", "read_metrics"]

MAX_LOG_LINES = 40
STOPPED = "stopped from the page; resume continues from the last checkpoint"
RECIPE = "studio-recipe.yaml"  # what the page asked for; the trainer writes recipe.yaml


def available_memory() -> int:
    """Bytes this machine can still give (Linux: MemAvailable; elsewhere free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def read_metrics(path: Path) -> dict[str, Any]:
    """`metrics.csv` as {"columns", "rows"} with numbers (blank cells None); the last
    line is left out while it is being written (no newline yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"columns": [], "rows": []}
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(text.splitlines())
    columns = next(reader, [])
    rows = []
    for row in reader:
        values: list[float | None] = []
        for cell in row:
            try:
                value = float(cell)
                values.append(value if math.isfinite(value) else None)
            except ValueError:
                values.append(None)
        rows.append(values)
    return {"columns": columns, "rows": rows}


def _write_json(path: Path, document: dict) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(document, indent=1), encoding="utf-8")
    os.replace(temp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int, run_dir: Path) -> bool:
    """Whether process `pid` is this run's worker (not another that got its number)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if str(run_dir) not in text:
            return False
        try:  # a finished child this server started is a zombie until reaped
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except (OSError, IndexError):
            return True
    return True


class Runs:
    """The runs under `--runs`: start, stop, resume, and what each one is doing."""

    def __init__(self, folder: Folder, *, parallel: int = 1):
        self.folder = folder
        self.parallel = parallel  # trainings at once without the page asking for more
        self._lock = threading.Lock()
        self._children: dict[str, subprocess.Popen] = {}  # reaped when they end
        self._seen: dict[str, list[tuple[float, float]]] = {}  # (step, when first seen)

    # ------------------------------------------------------------------ reading

    def _dir(self, name: str) -> Path:
        return self.folder.inside(run_name(name))

    def names(self) -> list[str]:
        root = self.folder.root
        if not root.is_dir():
            return []
        return sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir() and (p / "studio.json").exists() and self.folder.contains(p.name)
        )

    def running(self) -> list[str]:
        return [n for n in self.names() if self.status(n)["state"] == "running"]

    def status(self, name: str) -> dict[str, Any]:
        """A run's state (running, finished, failed, stopped), step, rate, time left,
        message and checkpoints."""
        run_dir = self._dir(name)
        started = _read_json(run_dir / "studio.json")
        if started is None:
            raise STCNNTError(f"no run named {name!r} in {self.folder.given}")
        child = self._children.get(name)  # started by this server: no need to guess
        ended = _read_json(run_dir / "exit.json")
        if ended is not None and ended.get("attempt") == started.get("attempt"):
            state, message = ended["state"], ended.get("message")
        elif (child is not None and child.poll() is None) or _alive(started["pid"], run_dir):
            state, message = "running", None
        else:
            state = "stopped"
            message = "the training process ended without saying why (killed?); resume it"
        metrics = read_metrics(run_dir / "metrics.csv")
        step = self._step(metrics)
        steps = started.get("steps")
        rate = self._rate(name, metrics, state)
        left = None
        if rate and steps and step is not None and state == "running":
            left = max(0.0, (steps - step) / rate)
        checkpoints = {key: (run_dir / f"{key}.safetensors").is_file() for key in ("last", "best")}
        return {
            "name": name,
            "state": state,
            "message": message,
            "step": step,
            "steps": steps,
            "rate": rate,
            "seconds_left": left,
            "started": started.get("started"),
            "spec": started.get("spec"),
            "task": started.get("task"),
            "memory": started.get("memory"),
            "checkpoints": checkpoints,
            "log": self.log(name) if state == "failed" else None,
        }

    @staticmethod
    def _step(metrics: dict[str, Any]) -> float | None:
        if "step" not in metrics["columns"] or not metrics["rows"]:
            return None
        column = metrics["columns"].index("step")
        steps = [row[column] for row in metrics["rows"] if len(row) > column and row[column]]
        return max(steps) if steps else None

    def _rate(self, name: str, metrics: dict[str, Any], state: str) -> float | None:
        """Steps per second over the last rows of metrics.csv (its `seconds` column), else
        from when this server first saw each step."""
        if state != "running":
            return None
        columns, rows = metrics["columns"], metrics["rows"]
        if "step" in columns and "seconds" in columns:  # seconds since this process started
            s, t = columns.index("step"), columns.index("seconds")
            points = [(r[s], r[t]) for r in rows[-20:] if r[s] is not None and r[t] is not None]
            while len(points) >= 2 and points[0][1] >= points[-1][1]:  # a resume restarts it
                points.pop(0)
            if len(points) >= 2 and points[-1][1] > points[0][1]:
                return (points[-1][0] - points[0][0]) / (points[-1][1] - points[0][1])
        step = self._step(metrics)
        seen = self._seen.setdefault(name, [])
        if step is not None and (not seen or step > seen[-1][0]):
            seen.append((step, time.monotonic()))
            del seen[:-20]
        if len(seen) < 2:
            return None
        (s0, t0), (s1, t1) = seen[0], seen[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    def metrics(self, name: str) -> dict[str, Any]:
        """The run's metrics, with each column marked as a loss or a validation metric
        (the page draws them in two panels)."""
        document = read_metrics(self._dir(name) / "metrics.csv")
        kinds = {}
        for column in document["columns"]:
            low = column.lower()
            if "loss" in low:
                kinds[column] = "loss"
            elif low.startswith("val_"):
                kinds[column] = "metric"
        return {**document, "kinds": kinds}

    def log(self, name: str) -> str:
        try:
            lines = (self._dir(name) / "train.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(line.rsplit("\r", 1)[-1] for line in lines[-MAX_LOG_LINES:])

    def file(self, name: str, filename: str) -> Path:
        """A file of a run (a checkpoint, the exported model), inside `--runs`."""
        path = self.folder.inside(run_name(name), filename)
        if not path.is_file():
            raise STCNNTError(f"run {name!r} has no {filename}")
        return path

    # ------------------------------------------------------------------ acting

    def new_name(self, stem: str = "run") -> str:
        existing = set(self.names())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, n = f"{stem}-{stamp}", 1
        while name in existing or (self.folder.root / name).exists():
            n += 1
            name = f"{stem}-{stamp}-{n}"
        return name

    def start(
        self,
        recipe: dict[str, Any],
        *,
        name: str | None = None,
        alongside: bool = False,
        need_bytes: int | None = None,
        info: dict | None = None,
    ) -> dict[str, Any]:
        """Write the run's recipe and start its process; refused while `parallel`
        trainings run (unless `alongside`) or when `need_bytes` is more than the free
        memory."""
        with self._lock:
            self._may_start(alongside, need_bytes)
            name = run_name(name) if name else self.new_name()
            run_dir = self._dir(name)
            if run_dir.exists():
                raise STCNNTError(f"a run named {name!r} exists already; choose another name")
            run_dir.mkdir(parents=True)
            text = yaml.safe_dump(recipe, sort_keys=False)
            (run_dir / RECIPE).write_text(text, encoding="utf-8")
            info = {**(info or {}), "steps": recipe.get("steps"), "memory": need_bytes}
            self._launch(name, run_dir, resume=False, info=info)
        return self.status(name)

    def resume(self, name: str, *, alongside: bool = False) -> dict[str, Any]:
        with self._lock:
            status = self.status(name)
            if status["state"] == "running":
                raise STCNNTError(f"run {name!r} is running already")
            if not status["checkpoints"]["last"]:
                raise STCNNTError(
                    f"run {name!r} has no checkpoint (last.safetensors) to resume "
                    "from yet: start a new run"
                )
            self._may_start(alongside, status.get("memory"))
            run_dir = self._dir(name)
            started = _read_json(run_dir / "studio.json") or {}
            self._launch(name, run_dir, resume=True, info=started)
        return self.status(name)

    def stop(self, name: str) -> dict[str, Any]:
        """Ask the run's process to stop (it writes exit.json); its last checkpoint stays."""
        run_dir = self._dir(name)
        started = _read_json(run_dir / "studio.json")
        if started is None:
            raise STCNNTError(f"no run named {name!r} in {self.folder.given}")
        if self.status(name)["state"] != "running":
            raise STCNNTError(f"run {name!r} is not running")
        try:
            os.killpg(started["pid"], signal.SIGTERM)
        except (ProcessLookupError, PermissionError, OSError):
            os.kill(started["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.status(name)["state"] == "running":
            time.sleep(0.05)
        ended = _read_json(run_dir / "exit.json")
        if self.status(name)["state"] != "running" and (
            ended is None or ended.get("attempt") != started.get("attempt")
        ):  # stopped before the worker could say so (still starting up)
            _write_json(run_dir / "exit.json", {
                "state": "stopped", "message": STOPPED, "attempt": started.get("attempt"),
                "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })  # fmt: skip
        return self.status(name)

    def _may_start(self, alongside: bool, need_bytes: int | None) -> None:
        running = self.running()
        if running and len(running) >= self.parallel and not alongside:
            raise STCNNTError(
                f"a training is running already ({', '.join(running)}); stop it, wait for it, "
                "or tick 'alongside' to run one more at the same time"
            )
        if need_bytes:
            free = available_memory()
            if need_bytes > free:
                raise STCNNTError(
                    f"this training needs about {need_bytes / 2**30:.2f} GiB and the machine has "
                    f"{free / 2**30:.2f} GiB free; choose a smaller patch or batch (or a "
                    "smaller memory budget for the plan), or stop another run"
                )

    def _launch(self, name: str, run_dir: Path, *, resume: bool, info: dict) -> None:
        command = [
            sys.executable,
            "-m",
            "stcnnt_dsl.studio.worker",
            str(run_dir),
        ]
        attempt = int(info.get("attempt", 0)) + 1
        command += ["--attempt", str(attempt)] + (["--resume"] if resume else [])
        with open(run_dir / "train.log", "ab") as log:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C here does not stop it
                cwd=run_dir,
            )
        self._children[name] = child
        self._seen.pop(name, None)
        _write_json(
            run_dir / "studio.json",
            {
                **info,
                "name": name,
                "pid": child.pid,
                "attempt": attempt,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "resumed": resume,
            },
        )
