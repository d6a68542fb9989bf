"""The error types every user mistake is reported with.

One base class (`STCNNTError`, a `ValueError`) so callers can catch everything the
library raises on bad input; the subclasses say *where* the mistake is: a line and
column in a text (`DSLSyntaxError`), a path in a spec (`SpecError`), or a rule that an
input shape breaks (`ShapeError`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DSLSyntaxError",
    "DataError",
    "ResourceError",
    "STCNNTError",
    "ShapeError",
    "SpecError",
    "TrainError",
    "WeightsError",
    "caret_excerpt",
    "did_you_mean",
    "quoted",
]


class STCNNTError(ValueError):
    """Base class of every error stcnnt-dsl raises for a user's mistake."""


def caret_excerpt(text: str, line: int, column: int) -> str:
    """The offending line of `text` with a caret under (1-based) `line`, `column`."""
    lines = text.splitlines() or [""]
    line = min(max(line, 1), len(lines))
    src = lines[line - 1]
    width = 100  # keep long lines readable: show a window around the column
    start = max(0, column - 1 - width // 2) if len(src) > width else 0
    shown = src[start : start + width]
    prefix = "..." if start else ""
    suffix = "..." if start + width < len(src) else ""
    pad = len(prefix) + column - 1 - start
    return f"    {prefix}{shown}{suffix}\n    {' ' * pad}^"


def quoted(text: str, limit: int = 60) -> str:
    """`text` quoted for a message, cut to about `limit` characters: a message never
    repeats a pasted 20,000-character text."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


class DSLSyntaxError(STCNNTError):
    """A block string or topology expression that does not parse.

    `.line` and `.column` are 1-based and point at the first bad character; the message
    shows the offending line with a caret under it.
    """

    def __init__(
        self, message: str, *, text: str, line: int, column: int, source: str | None = None
    ) -> None:
        lines = text.split("\n")
        if line > len(lines):  # past the end (a parser's end of stream): the text's end
            line, column = len(lines), len(lines[-1]) + 1
        self.reason = message
        self.text = text
        self.line = line
        self.column = column
        self.source = source
        where = f"{source}:" if source else ""
        super().__init__(f"{where}{line}:{column}: {message}\n{caret_excerpt(text, line, column)}")


class SpecError(STCNNTError):
    """A spec (YAML, dict, expression or options) that is well-formed text but wrong.

    `.path` names the place (`unet.encoder[2].window`); `.file`, `.line`, `.column` are
    set when the spec came from a file or text and the place could be located in it.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.reason = message
        self.path = path
        self.file = file
        self.line = line
        self.column = column
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file or self.line:
            where = f"{self.file or '<text>'}"
            if self.line:
                where += f":{self.line}:{self.column or 1}"
            where += ": "
        at = f"{self.path}: " if self.path else ""
        return f"{where}{at}{self.reason}"

    def located(
        self,
        *,
        path_prefix: str = "",
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> SpecError:
        """Return this error with a longer path and/or a file position filled in."""
        if path_prefix:
            self.path = _join_path(path_prefix, self.path)
        if file is not None and self.file is None:
            self.file = file
        if line is not None and self.line is None:
            self.line, self.column = line, column
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()


class ShapeError(SpecError):
    """An input shape that the architecture cannot run on.

    The message names the stage and cell, the rule that fails, and (where there is
    one) the nearest valid input sizes.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        *,
        rule: str = "",
        nearest: dict | None = None,
        **kwargs,
    ) -> None:
        self.rule = rule
        self.nearest = nearest or {}
        super().__init__(message, path, **kwargs)


class ResourceError(SpecError):
    """A request whose estimated parameters or memory exceed the configured limit."""


class WeightsError(STCNNTError):
    """A weights file that does not match its architecture or is not a safe format."""


class DataError(STCNNTError):
    """An imaging file, data set or prediction target that cannot be used as given.

    `.file` names the file or folder at fault (None when no single one is).
    """

    def __init__(self, message: str, file: object = None) -> None:
        self.file = None if file is None else str(file)
        super().__init__(f"{file}: {message}" if file is not None else message)


class TrainError(STCNNTError):
    """A training run that cannot start or go on: an output folder holding another run,
    a NaN loss, a checkpoint that cannot be written. The message names the step and the
    last good checkpoint."""


def _join_path(prefix: str, path: str) -> str:
    if not path:
        return prefix
    if not prefix:
        return path
    if path.startswith("["):
        return prefix + path
    return f"{prefix}.{path}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def either(words: Iterable[str]) -> str:
    """`a, b or c`: the choices a message offers."""
    words = list(words)
    if len(words) < 2:
        return "".join(words)
    return f"{', '.join(words[:-1])} or {words[-1]}"
