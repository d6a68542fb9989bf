"""Everything the studio shows about a spec, computed from its text.

The server and the page talk only to the functions here: `analyze`, `compare`,
`explain_stage`, `canonical`, `architectures`, `bundled_text`, `default_input`,
`cell_options` and `schema`. They read the model graph (`stcnnt_dsl.graph`): no module
is built, no tensor made, nothing timed, and torch is never imported, so an answer takes
milliseconds.

`text` is always text (YAML, a one-line expression or a bundled name), never a path:
a studio must not read files a browser names.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from typing import Any

from ..errors import DSLSyntaxError, ShapeError, SpecError, STCNNTError, did_you_mean
from ..graph.build import build_graph
from ..graph.guard import estimate, guard
from ..graph.model import ModelGraph, describe_rule, parse_shape
from ..graph.nodes import BlockNode, MergeNode
from ..graph.shapes import checked
from ..language.options import options_for_kind
from ..language.spec import (
    SpecSource,
    dump_spec,
    list_architectures,
    load_source,
    spec_json_schema,
)
from ..language.spec import bundled_text as _bundled_text
from ..registry import KIND_TO_LETTER, cell_kinds, has_mixer_digit, topology_names
from ..tools.diagram import to_dot
from ..tools.explain import explain

__all__ = [
    "analyze",
    "architectures",
    "bundled_text",
    "canonical",
    "cell_options",
    "compare",
    "default_input",
    "error_document",
    "explain_stage",
    "load_text",
    "render_svg",
    "schema",
]

SVG_TIMEOUT_S = 10.0
_EXPRESSION = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*\(")
_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w.]*(?:\[\d+\][\w.]*)*): ")


# --------------------------------------------------------------------------- loading


def load_text(text: str) -> SpecSource:
    """The spec in `text` (a bundled name, a one-line expression, or YAML text) with the
    positions of its keys and values; never read from a path."""
    if not isinstance(text, str):
        raise SpecError(f"the spec must be text, got {type(text).__name__}")
    if not text.strip():
        raise SpecError(
            "the text is empty: write YAML with a topology key (unet:, hrnet: or llm:), an "
            "expression such as unet(channels=[32,64], blocks=T1L1G1), or pick a bundled "
            "architecture"
        )
    return load_source(text, read_files=False)


@functools.lru_cache(maxsize=128)
def _graph(text: str) -> ModelGraph:
    return build_graph(load_text(text))


def default_input(text: str) -> str:
    """The input "B,T,C,H,W" a spec is shown with by default: the smallest input it
    accepts (its `input_size` when it has one), or 1,1,1,64,64 for a broken text."""
    try:
        shape = _graph(text).default_input()
    except STCNNTError:
        shape = (1, 1, 1, 64, 64)
    return ",".join(map(str, shape))


# --------------------------------------------------------------------------- errors


def error_document(err: BaseException, text: str | None = None, path: str | None = None) -> dict:
    """{"message", "line", "column", "path", "type", ...} of a user error; line and
    column are 1-based, or None when the text has no place for it."""
    line = getattr(err, "line", None)
    column = getattr(err, "column", None)
    reason = getattr(err, "reason", None)
    where = path if path is not None else getattr(err, "path", None)
    if path == "input":  # the input box's mistake, not the text's: no spec path, no line
        message, line, column = reason or str(err), None, None
    elif isinstance(err, DSLSyntaxError):
        # The reason of a syntax error in a YAML field starts with that field's path.
        match = _PATH_PREFIX.match(reason or "")
        where = match.group(1) if match else ""
        message = reason or str(err)
    elif isinstance(err, SpecError):
        message = f"{err.path}: {reason}" if err.path else (reason or str(err))
    else:
        message = str(err)
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


def _user_error(err: STCNNTError, text: str, path: str | None = None) -> dict:
    doc = error_document(err, text, path)
    stripped = text.lstrip()
    if doc["line"] is not None and stripped != text and _EXPRESSION.match(stripped):
        # An expression is read without its leading blank space: back to `text`.
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
        "head_outputs": None,
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
        graph = _graph(text)
        params = guard(graph)  # absurd sizes are refused before anything else
    except STCNNTError as err:
        result["error"] = _user_error(err, text)
        return result
    spec = graph.spec
    by_node = graph.per_node(graph.params())
    result.update(
        name=spec.name,
        topology=spec.topology,
        description=spec.description,
        accepts=describe_rule(graph.rule()),
        params=params.params,
        param_bytes=params.param_bytes,
    )
    stages = graph.stages
    result["stages"] = rows = [
        {
            "name": s.name,
            "label": s.label,
            "path": s.path,
            "block": str(s.plan.block),
            "cells": len(s.plan.cells),
            "in_channels": s.in_channels,
            "out_channels": s.out_channels,
            "scale": s.scale,
            "shape": None,
            "params": by_node[s.name],
            "flops": None,
            "activation_bytes": None,
        }
        for s in stages
    ] + [
        {  # heads are rows too: nodes like any other
            "name": h.name,
            "label": h.label,
            "path": h.path,
            "block": h.label,
            "cells": 0,
            "in_channels": h.backbone_channels,
            "out_channels": h.out_channels,
            "scale": 1,
            "shape": None,
            "params": by_node[h.name],
            "flops": None,
            "activation_bytes": None,
        }
        for h in graph.heads
    ]
    result["other"] = {
        "params": params.params - sum(r["params"] for r in rows),
        "flops": None,
        "activation_bytes": None,
        "nodes": [
            {"name": n.name, "kind": n.kind, "label": n.label, "params": by_node[n.name]}
            for n in graph.nodes
            if not isinstance(n, (BlockNode, MergeNode))
        ],
    }
    try:
        result["dot"] = dot = to_dot(graph)
        result["svg"] = render_svg(dot)
    except STCNNTError as err:
        result["warnings"].append(str(err))
    if not input_text.strip():
        input_text = result["input"] = ",".join(map(str, graph.default_input()))
    try:
        shape = parse_shape(input_text)
    except STCNNTError as err:
        result["error"] = _user_error(err, text, path="input")
        return result
    try:
        graph, shape = checked(graph, shape, memory=True)  # sizes, then the memory guard
    except STCNNTError as err:  # the spec is valid (guarded above): the input is not
        result["error"] = _user_error(err, text, path="input")
        return result
    itemsize = 4  # float32 bytes: the studio shows the default precision
    flops = graph.per_node(graph.flops(shape))
    acts = graph.per_node(graph.saved(shape))
    shapes = graph.shapes(shape)
    for row in rows:
        row["shape"] = list(shapes[row["name"]])
        row["flops"] = flops[row["name"]]
        row["activation_bytes"] = acts[row["name"]] * itemsize
    total_flops = sum(flops.values())
    total_acts = sum(acts.values()) * itemsize
    result["other"].update(
        flops=total_flops - sum(r["flops"] for r in rows),
        activation_bytes=total_acts - sum(r["activation_bytes"] for r in rows),
    )
    b, t, _, h, w = shape
    result.update(
        ok=True,
        input=",".join(map(str, shape)),
        flops=total_flops,
        activation_bytes=total_acts,
        memory_bytes=params.param_bytes + total_acts,
        output=list(shapes[graph.output]),
        features=[[b, t, f.channels, h // f.reduction, w // f.reduction] for f in graph.features],
        head_outputs={head.head_name: list(shapes[head.name]) for head in graph.heads},
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
        found = explain(_graph(text).source, stage=stage).to_dict()
    except STCNNTError as err:
        return {"ok": False, "error": _user_error(err, text), "stage": None, "sources": None}
    return {"ok": True, "error": None, "stage": found["stages"][0], "sources": found["sources"]}


def canonical(text: str) -> str:
    """The canonical YAML of the spec in `text` (`dump_spec`); raises `STCNNTError`."""
    return dump_spec(load_text(text).spec)


@functools.lru_cache(maxsize=1)
def _architectures() -> list[dict[str, Any]]:
    rows = []
    for name in list_architectures():
        graph = _graph(name)
        rows.append({
            "name": name,
            "topology": graph.topology,
            "description": graph.spec.description,
            "input": default_input(name),
            "params": estimate(graph).params,
        })  # fmt: skip
    return rows


def architectures() -> list[dict[str, Any]]:
    """The bundled architectures: name, topology, description, default input."""
    return copy.deepcopy(_architectures())


def bundled_text(name: str) -> str:
    """The file text of a bundled architecture (with its comments); only names from
    `list_architectures()` are accepted."""
    if name not in list_architectures():
        raise SpecError(
            f"no bundled architecture {name!r}{did_you_mean(name, list_architectures())}; "
            "bundled: " + ", ".join(list_architectures())
        )
    return _bundled_text(name)


def cell_options() -> dict[str, list[str]]:
    """The options each cell token of a block string reads inline (`L1`, `T0`, `C2`, and
    registered kinds): what completion offers inside `L1[...]`, from the options table."""
    out = {}
    for kind in cell_kinds():
        letter = KIND_TO_LETTER[kind]
        if has_mixer_digit(kind):
            for digit in (0, 1):
                out[f"{letter}{digit}"] = list(options_for_kind(kind, mixer=bool(digit)))
        else:
            out[letter] = list(options_for_kind(kind))
    return out


def topologies() -> list[str]:
    """Every topology, built-in and registered: the keys (and expression names) that
    start a spec, for completion."""
    return list(topology_names())


def schema() -> dict[str, Any]:
    """JSON Schema of the YAML format (`stcnnt schema`), for key and value completion
    (made per call: registered norms and activations join it)."""
    return spec_json_schema()
