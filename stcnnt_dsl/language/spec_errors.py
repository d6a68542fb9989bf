"""Pydantic's validation errors turned into one `STCNNTError` naming the spec path
and, for text, the line and column."""

from __future__ import annotations

from typing import Any

from pydantic import (
    ValidationError,
)

from ..errors import DSLSyntaxError, SpecError, STCNNTError, _join_path
from .yamlio import Positions


def _loc_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_union_tag(part):
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _from_validation_error(
    err: ValidationError, positions: Positions, text: str | None, file: str | None
) -> STCNNTError:
    first = err.errors(include_url=False)[0]
    path = _loc_path(first["loc"])
    ctx = first.get("ctx") or {}
    if ctx.get("field"):
        path = _join_path(path, ctx["field"])  # a field of "[2]" is an index
    cause = ctx.get("error")
    if isinstance(cause, DSLSyntaxError):
        if getattr(cause, "index", None) is not None:
            path = f"{path}[{cause.index}]"
        return _relocate_syntax_error(cause, path, positions, text, file)
    if isinstance(cause, SpecError):
        return cause.located(path_prefix=path)
    message = first["msg"]
    if first["type"] == "missing":
        message = f"required key {path.rsplit('.', 1)[-1]!r} is missing"
        path = path.rsplit(".", 1)[0] if "." in path else ""
    elif first["type"] != "stcnnt":  # pydantic's own wording: say what was given
        given = repr(first.get("input"))
        message += f", got {given if len(given) <= 60 else given[:57] + '...'}"
    spec_error = SpecError(message, path)
    key = message.startswith("unknown key")
    line_col = positions.find(path, key=key)
    if line_col:
        spec_error.located(file=file or "<yaml>", line=line_col[0], column=line_col[1])
    return spec_error


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member's type to the loc ("list[...]", "function-before...")
    return isinstance(part, str) and (
        part.startswith("function-") or part.startswith("list[") or part in ("str", "int")
    )


def _relocate_syntax_error(
    err: DSLSyntaxError, path: str, positions: Positions, text: str | None, file: str | None
) -> DSLSyntaxError:
    """A syntax error inside a block string, moved to file coordinates when known."""
    start = positions.get(path)
    if start is None or text is None:
        err.args = (f"{path}: {err.args[0]}",)
        return err
    line0, col0 = start
    lines = text.splitlines()
    # Quoted scalars start one character before their text.
    if line0 <= len(lines) and lines[line0 - 1][col0 - 1 : col0] in ("'", '"'):
        col0 += 1
    line = line0 + err.line - 1
    column = col0 + err.column - 1 if err.line == 1 else err.column
    return DSLSyntaxError(
        f"{path}: {err.reason}", text=text, line=line, column=column, source=file or "<yaml>"
    )
