"""Everything the studio shows about a spec, computed from its text.

The server and the page talk only to the functions here: `analyze`, `compare`,
`explain_stage`, `canonical`, `architectures`, `bundled_text`, `default_input` and
`schema`. Their insides use the library's public API of today (`load_spec`, `make_plan`,
`infer_shapes`, the resource guard, the analytic FLOP count, `to_dot` rendered by
Graphviz, `explain`), so a faster model-graph API can replace them later without touching
the server or the page. Nothing here builds modules on real tensors or times anything.

`text` is always text (YAML, a one-line expression or a bundled name), never a path:
a studio must not read files a browser names (see `load_text`).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from ..errors import DSLSyntaxError, ShapeError, SpecError, STCNNTError
from ..explain import explain
from ..flops import count_flops_analytic, stage_module_name
from ..graph import to_dot
from ..plan import Plan, make_plan
from ..resources import block_params, estimate, guard
from ..shapes import infer_shapes, parse_shape
from ..spec import ArchSpec, dump_spec, list_architectures, load_spec, spec_json_schema
from ..yamlio import load_yaml

__all__ = [
    "DEFAULT_INPUT",
    "analyze",
    "architectures",
    "bundled_text",
    "canonical",
    "compare",
    "default_input",
    "error_document",
    "explain_stage",
    "load_text",
    "render_svg",
    "schema",
]

DEFAULT_INPUT = (1, 1, 1, 64, 64)
"""The input shown for a spec without `input_size` (as `stcnnt profile` does)."""

SVG_TIMEOUT_S = 10.0
_EXPRESSION = re.compile(r"^\s*[a-z_][a-z0-9_]*\s*\(")
_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w.]*(?:\[\d+\][\w.]*)*): ")


# --------------------------------------------------------------------------- loading


def load_text(text: str) -> ArchSpec:
    """The spec in `text`: a bundled name, a one-line expression, or YAML text.

    `load_spec` also accepts paths; a text that names a file must not be read here, so a
    text that is neither a bundled name nor an expression always goes to the YAML reader
    (a trailing comment line makes `load_spec` see multi-line text, which it never
    treats as a path; line numbers are unchanged).
    """
    if not isinstance(text, str):
        raise SpecError(f"the spec must be text, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise SpecError(
            "the text is empty: write YAML with a topology key (unet:, hrnet: or llm:), an "
            "expression such as unet(channels=[32,64], blocks=T1L1G1), or pick a bundled "
            "architecture"
        )
    if stripped in list_architectures() or _EXPRESSION.match(stripped):
        return load_spec(stripped)
    return load_spec(text + "\n#")


def _spec_or_none(text: str) -> ArchSpec | None:
    try:
        return load_text(text)
    except STCNNTError:
        return None


def default_input(text: str) -> str:
    """The input "B,T,C,H,W" a spec is shown with by default: 1 sample, 1 frame, its input
    channels, its `input_size` or 64x64 (the default input of `stcnnt profile`)."""
    spec = _spec_or_none(text)
    if spec is None:
        return ",".join(map(str, DEFAULT_INPUT))
    h, w = spec.input_size if spec.input_size is not None else DEFAULT_INPUT[3:]
    return f"1,1,{spec.in_channels},{h},{w}"


# --------------------------------------------------------------------------- errors


def error_document(err: BaseException, text: str | None = None, path: str | None = None) -> dict:
    """{"message", "line", "column", "path", "type", ...} of a user error; line and
    column are 1-based, or None when the text has no place for it."""
    line = getattr(err, "line", None)
    column = getattr(err, "column", None)
    reason = getattr(err, "reason", None)
    where = path if path is not None else getattr(err, "path", None)
    if isinstance(err, DSLSyntaxError):
        # The reason of a syntax error in a YAML field starts with that field's path.
        match = _PATH_PREFIX.match(reason or "")
        where = match.group(1) if match else ""
        message = reason or str(err)
    elif isinstance(err, SpecError):
        message = f"{err.path}: {reason}" if err.path else (reason or str(err))
    else:
        message = str(err)
    if line is None and where and text is not None:
        line, column = _locate(where, text) or (None, None)
    if line is not None and column is None:
        column = 1
    doc: dict[str, Any] = {
        "message": message,
        "line": line,
        "column": column,
        "path": where or "",
        "type": type(err).__name__,
    }
    if isinstance(err, ShapeError):
        doc["rule"] = err.rule
        doc["nearest"] = err.nearest
    return doc


def _locate(path: str, text: str) -> tuple[int, int] | None:
    """Where `path` (e.g. `unet.bridge`) is written in YAML `text`, if it is."""
    if _EXPRESSION.match(text.strip()) or text.strip() in list_architectures():
        return None
    try:
        _, positions = load_yaml(text)
    except STCNNTError:
        return None
    return positions.get(path)


def _user_error(err: STCNNTError, text: str, path: str | None = None) -> dict:
    doc = error_document(err, text, path)
    stripped = text.lstrip()
    if doc["line"] is not None and stripped != text and _EXPRESSION.match(stripped):
        # `load_spec` reads an expression without its leading blank space: back to `text`.
        lead = text[: len(text) - len(stripped)]
        if doc["line"] == 1:
            doc["column"] += len(lead) - (lead.rfind("\n") + 1)
        doc["line"] += lead.count("\n")
    return doc


# --------------------------------------------------------------------------- diagrams


@functools.lru_cache(maxsize=256)
def render_svg(dot: str) -> str:
    """SVG of Graphviz DOT source (cached by the DOT text: equal diagrams render once).
    Raises `STCNNTError` when Graphviz's `dot` program is missing or fails."""
    program = shutil.which("dot")
    if program is None:
        raise STCNNTError(
            "Graphviz's `dot` program is not installed, so the diagram cannot be drawn "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)"
        )
    try:
        done = subprocess.run(
            [program, "-Tsvg"], input=dot.encode(), capture_output=True, timeout=SVG_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise STCNNTError(
            f"Graphviz took longer than {SVG_TIMEOUT_S:g} s to draw the diagram"
        ) from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise STCNNTError(f"Graphviz failed to draw the diagram: {message}")
    svg = done.stdout.decode("utf-8", errors="replace")
    return svg[svg.find("<svg") :]  # without the XML prolog: ready to put in a page


# --------------------------------------------------------------------------- analysis


def _rule_text(plan: Plan) -> str:
    rule = plan.global_rule()
    mh, mw = rule.multiple
    if rule.exact is not None:
        text = f"H={rule.exact[0]}, W={rule.exact[1]} exactly"
    elif mh == mw:
        text = f"H and W multiples of {mh}"
    else:
        text = f"H a multiple of {mh}, W of {mw}"
    if rule.exact is None and rule.minimum > 1:
        text += f", at least {rule.minimum}"
    return text + (f", T >= {rule.min_frames}" if rule.min_frames > 1 else ", any T")


def _stage_activation_bytes(plan: Plan, shape: Sequence[int], itemsize: int) -> dict[str, int]:
    """Activation bytes per stage key. The public estimate sums them by spec path, and
    HR-Net stages of one level share a path, so the per-stage figure comes from the same
    formula the estimate sums (a model-graph API will give it directly)."""
    from ..resources import _stage_activations

    b, t, _, h, w = shape
    return {s.key: _stage_activations(s, b, t, h, w) * itemsize for s in plan.stages}


def _empty(input_text: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": None,
        "name": None,
        "topology": None,
        "description": None,
        "input": input_text,
        "accepts": None,
        "params": None,
        "param_bytes": None,
        "flops": None,
        "activation_bytes": None,
        "memory_bytes": None,
        "output": None,
        "features": None,
        "stages": [],
        "other": None,
        "svg": None,
        "dot": None,
        "warnings": [],
    }


def analyze(text: str, input: str) -> dict[str, Any]:
    """The studio's picture of `text` on an input "B,T,C,H,W" (blank: `default_input`).

    Always a dict with `ok`, `error` ({message, line, column, path} or None), the totals
    (`params`, `flops`, `activation_bytes`, `output`), `stages` (one row per block), `svg`
    (the `stcnnt graph` diagram) and more. A spec that is valid for another input still
    gets its parameters, stages and diagram, with `ok` False and the input's error.
    """
    return copy.deepcopy(_analyze(text, input))


@functools.lru_cache(maxsize=128)
def _analyze(text: str, input_text: str) -> dict[str, Any]:
    result = _empty(input_text)
    try:
        spec = load_text(text)
        plan = make_plan(spec)
        params = guard(plan)  # absurd sizes are refused before anything else
    except STCNNTError as err:
        result["error"] = _user_error(err, text)
        return result
    result.update(
        name=spec.name,
        topology=spec.topology,
        description=spec.description,
        accepts=_rule_text(plan),
        params=params.params,
        param_bytes=params.param_bytes,
    )
    result["stages"] = rows = [
        {
            "name": s.key,
            "label": s.label,
            "path": s.path,
            "block": str(s.block),
            "cells": len(s.block.cells),
            "in_channels": s.in_channels,
            "out_channels": s.out_channels,
            "scale": s.scale,
            "shape": None,
            "params": block_params(s.block.cells, s.in_channels, s.out_channels, s.cell_options()),
            "flops": None,
            "activation_bytes": None,
        }
        for s in plan.stages
    ]
    result["other"] = {
        "params": params.params - sum(r["params"] for r in rows),
        "flops": None,
        "activation_bytes": None,
    }
    try:
        result["dot"] = dot = to_dot(spec)
        result["svg"] = render_svg(dot)
    except STCNNTError as err:
        result["warnings"].append(str(err))
    if not input_text.strip():
        input_text = result["input"] = default_input(text)
    try:
        shape = parse_shape(input_text)
    except STCNNTError as err:
        result["error"] = _user_error(err, text, path="input")
        return result
    try:
        shapes = infer_shapes(plan, shape)  # every construction and size rule (meta device)
        est = guard(plan, shape)  # weights + activations within the default limits
    except STCNNTError as err:
        result["error"] = _user_error(err, text)
        return result
    flops = count_flops_analytic(plan, shape)
    acts = _stage_activation_bytes(plan, shape, est.dtype.itemsize)
    for stage, row in zip(plan.stages, rows, strict=True):
        row["shape"] = list(shapes["stages"][stage.key])
        row["flops"] = flops.by_module.get(stage_module_name(plan, stage), 0)
        row["activation_bytes"] = acts[stage.key]
    result["other"].update(
        flops=flops.total - sum(r["flops"] for r in rows),
        activation_bytes=(est.activation_bytes or 0) - sum(r["activation_bytes"] for r in rows),
    )
    result.update(
        ok=True,
        input=",".join(map(str, shape)),
        flops=flops.total,
        activation_bytes=est.activation_bytes,
        memory_bytes=est.memory_bytes,
        output=list(shapes["output"]),
        features=[list(f) for f in shapes["features"]],
    )
    return result


# --------------------------------------------------------------------------- compare


def _delta(a: float | None, b: float | None) -> dict[str, Any]:
    if a is None or b is None:
        return {"a": a, "b": b, "delta": None, "ratio": None}
    return {"a": a, "b": b, "delta": b - a, "ratio": (b - a) / a if a else None}


_METRICS = ("params", "flops", "activation_bytes")


def compare(a_text: str, a_input: str, b_text: str, b_input: str | None = None) -> dict[str, Any]:
    """Two specs side by side: both analyses, and the deltas (B - A) of the totals and
    of every stage (stages matched by name; one only in A or B has no delta)."""
    a = analyze(a_text, a_input)
    b = analyze(b_text, a_input if b_input is None else b_input)
    by_name = {row["name"]: row for row in b["stages"]}
    names = [row["name"] for row in a["stages"]]
    names += [n for n in by_name if n not in names]
    a_rows = {row["name"]: row for row in a["stages"]}
    stages = []
    for name in names:
        ra, rb = a_rows.get(name), by_name.get(name)
        both = ra is not None and rb is not None
        deltas = {m: _delta(ra[m], rb[m]) for m in _METRICS} if both else None
        stages.append({"name": name, "a": ra, "b": rb, "delta": deltas})
    return {
        "ok": a["ok"] and b["ok"],
        "a": a,
        "b": b,
        "deltas": {m: _delta(a[m], b[m]) for m in _METRICS},
        "stages": stages,
    }


# --------------------------------------------------------------------------- explain etc.


def explain_stage(text: str, stage: str) -> dict[str, Any]:
    """Every cell option of one stage (its name, e.g. `encoder.1`), resolved, with where
    each value came from: {"ok", "error", "stage", "sources"}."""
    try:
        found = explain(load_text(text), stage=stage).to_dict()
    except STCNNTError as err:
        return {"ok": False, "error": _user_error(err, text), "stage": None, "sources": None}
    return {"ok": True, "error": None, "stage": found["stages"][0], "sources": found["sources"]}


def canonical(text: str) -> str:
    """The canonical YAML of the spec in `text` (`dump_spec`); raises `STCNNTError`."""
    return dump_spec(load_text(text))


def architectures() -> list[dict[str, Any]]:
    """The bundled architectures: name, topology, description, default input."""
    rows = []
    for name in list_architectures():
        spec = load_spec(name)
        rows.append({
            "name": name,
            "topology": spec.topology,
            "description": spec.description,
            "input": default_input(name),
            "params": estimate(spec).params,
        })  # fmt: skip
    return rows


def bundled_text(name: str) -> str:
    """The file text of a bundled architecture (with its comments); only names from
    `list_architectures()` are accepted."""
    if name not in list_architectures():
        from ..errors import did_you_mean

        raise SpecError(
            f"no bundled architecture {name!r}{did_you_mean(name, list_architectures())}; "
            "bundled: " + ", ".join(list_architectures())
        )
    package = importlib.resources.files("stcnnt_dsl.architectures")
    return (package / f"{name}.yaml").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return spec_json_schema()


def schema() -> dict[str, Any]:
    """JSON Schema of the YAML format (`stcnnt schema`), for key and value completion."""
    return copy.deepcopy(_schema())
