"""Loading specs from anything `load_spec` accepts: a path, a dict, YAML text, a
topology expression or a bundled name."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from ..errors import DSLSyntaxError, SpecError, caret_excerpt, did_you_mean, either, quoted
from ..registry import load_plugins, topology_names
from .arch_spec import ArchSpec, SpecSource
from .parser import parse_expression
from .spec_errors import _from_validation_error
from .yamlio import MAX_YAML_BYTES, Positions, load_yaml


def _validate(
    data: Any, positions: Positions | None = None, text: str | None = None,
    file: str | None = None,
) -> SpecSource:  # fmt: skip
    positions = positions if positions is not None else Positions()
    if data is None:
        raise SpecError(
            "the architecture is empty (or only comments); write a topology, e.g. "
            "unet: {channels: [32, 64], blocks: T1L1G1}",
            file=file,
        )
    if not isinstance(data, Mapping):
        raise SpecError(
            "an architecture is a mapping with a topology key "
            f"({either(topology_names())}), got "
            f"{type(data).__name__}"
            + (
                f" {data!r}" if isinstance(data, (str, int, float)) and len(repr(data)) < 60 else ""
            ),
            file=file,
        )
    try:
        spec = ArchSpec.model_validate(data)
    except ValidationError as err:
        raise _from_validation_error(err, positions, text, file) from None
    return SpecSource(spec, positions, text, file)


_EXPRESSION = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*\(")
_TOP_LEVEL_KEYS = ("name", "description", "in_channels", "input_size", "defaults", "pre", "heads")


def _from_expression(text: str) -> SpecSource:
    name = text.strip().split("(", 1)[0].strip()
    topologies = topology_names()
    if name not in topologies:
        column = text.index(name) + 1
        case = (
            f"; topology names are lower case: {name.lower()}(...)"
            if (name.lower() in topologies)
            else "; use " + either(f"{t}(...)" for t in topologies)
        )
        raise DSLSyntaxError(
            f"unknown topology {name!r}{did_you_mean(name.lower(), topologies)}{case}",
            text=text, line=1, column=column,
        )  # fmt: skip
    expr = parse_expression(text)
    args = dict(expr.args)
    # `heads={seg={...}}` names task heads; `heads=4` stays the attention heads option
    lifted = {
        k for k in _TOP_LEVEL_KEYS if k in args and (k != "heads" or isinstance(args[k], dict))
    }
    data: dict[str, Any] = {k: args.pop(k) for k in _TOP_LEVEL_KEYS if k in lifted}
    data[expr.topology] = args

    def spec_path(path: str) -> str:
        """`unet.defaults.window` -> `defaults.window`: top-level keys may be given
        inside the expression."""
        head, _, rest = path.partition(".")
        first = rest.split(".")[0].split("[")[0]
        return rest if head == expr.topology and rest and first in lifted else path

    positions = Positions(
        {spec_path(p): pos for p, pos in expr.positions.items()},
        {spec_path(p): pos for p, pos in expr.key_positions.items()},
    )
    try:
        return _validate(data, positions, text, "<expression>")
    except SpecError as err:
        if err.line is not None:
            err.args = (f"{err}\n{caret_excerpt(text, err.line, err.column or 1)}",)
        raise


def _bundled_dir() -> Any:
    return resources.files("stcnnt_dsl.architectures")


def list_architectures() -> list[str]:
    """Names of the bundled architectures (`stcnnt list`)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _bundled_dir().iterdir() if p.name.endswith(".yaml")
    )


def bundled_text(name: str) -> str:
    """The text of a bundled architecture file."""
    return (_bundled_dir() / f"{name}.yaml").read_text(encoding="utf-8")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _decode(data: bytes, file: str) -> str:
    """UTF-8 text, or an error at the first byte that is not UTF-8 (a Latin-1 or
    UTF-16 file would otherwise be read with replacement characters)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError(
            f"the file is not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}, "
            f"column {column}); save it as UTF-8",
            file=file, line=line, column=column,
        ) from None  # fmt: skip


def _check_json(text: str, file: str) -> None:
    """A .json file must be JSON (YAML would also accept trailing commas, comments, ...)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise DSLSyntaxError(
            f"invalid JSON: {err.msg}", text=text, line=err.lineno, column=err.colno, source=file
        ) from None


# Files people give where a spec is expected, by suffix.
_NOT_SPECS = {
    ".onnx": "an ONNX file (what export writes)",
    ".safetensors": "a weights file",
    ".pt": "a PyTorch checkpoint",
    ".pth": "a PyTorch checkpoint",
}


def _load_file(path: Path) -> SpecSource:
    if not _is_file(path):
        if path.is_dir():
            raise SpecError(f"{path} is a folder; give an architecture file", file=str(path))
        raise SpecError(f"file not found: {path}", file=str(path))
    kind = _NOT_SPECS.get(path.suffix.lower())
    if kind:
        raise SpecError(
            f"this is {kind}, not an architecture: give a .yaml/.json spec, an "
            "expression or a bundled name (a model saved by save_model: "
            "stcnnt_dsl.load_model, or `stcnnt export model.safetensors`)",
            file=str(path),
        )
    too_big = (
        f"architecture files are limited to {MAX_YAML_BYTES // 1000} kB (a spec is a few "
        "hundred bytes)"
    )
    if path.stat().st_size > MAX_YAML_BYTES:  # refused before reading anything
        raise SpecError(f"the file is {path.stat().st_size} bytes; {too_big}", file=str(path))
    try:
        with path.open("rb") as handle:  # never more than the limit, even if it grows
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise SpecError(f"cannot read {path}: {err.strerror or err}", file=str(path)) from None
    if len(data) > MAX_YAML_BYTES:
        raise SpecError(f"the file is larger than the limit; {too_big}", file=str(path))
    text = _decode(data, str(path))
    if path.suffix.lower() == ".json":
        _check_json(text, str(path))
    return _load_text(text, str(path))


def _load_text(text: str, file: str | None) -> SpecSource:
    data, positions = load_yaml(text, file=file)
    if isinstance(data, str) and _EXPRESSION.match(data):
        return _from_expression(data)
    return _validate(data, positions, text, file)


def load_source(source: Any, *, read_files: bool = True) -> SpecSource:
    """Like `load_spec`, keeping the positions of the text (see `SpecSource`).
    `read_files=False`: `source` is never read as a path (text from a web page, say)."""
    if isinstance(source, SpecSource):
        return source
    load_plugins()
    if isinstance(source, ArchSpec):
        return SpecSource(source)
    if isinstance(source, Mapping):
        return _validate(dict(source))
    if isinstance(source, Path):
        if not read_files:
            raise SpecError("a path was given where only text is accepted")
        return _load_file(source)
    if not isinstance(source, str):
        raise SpecError(
            f"cannot load an architecture from {type(source).__name__}; pass a path, a "
            "dict, YAML text, an expression or a bundled name"
        )
    text = source.strip()
    if text in list_architectures():
        return _load_text(bundled_text(text), f"<bundled {text}.yaml>")
    one_line = "\n" not in text
    if one_line and read_files and text.endswith((".yaml", ".yml", ".json")):
        return _load_file(Path(text))  # "unet (1).yaml" is a file name, not an expression
    if _EXPRESSION.match(text):
        return _from_expression(text)
    if one_line and text.endswith((".yaml", ".yml", ".json")) and not read_files:
        raise SpecError(
            f"{quoted(text)} looks like a file name; here an architecture is given as text "
            "(YAML, an expression or a bundled name), never read from a path"
        )
    if one_line and read_files and (text.endswith((".yaml", ".yml", ".json"))
                                    or _is_file(Path(text))):  # fmt: skip
        return _load_file(Path(text))
    if not one_line or ":" in text or text.startswith("#"):
        return _load_text(source, None)
    hint = did_you_mean(text, list_architectures()) if len(text) < 100 else ""
    what = "a file, a bundled architecture" if read_files else "a bundled architecture"
    never = "" if read_files else " (a text given here is never read as a file path)"
    raise SpecError(
        f"{quoted(text)} is not {what}{hint}, an expression like "
        f"unet(channels=[32,64], blocks=T1L1G1), or YAML text{never}; bundled: "
        + ", ".join(list_architectures())
    )


def load_spec(source: Any) -> ArchSpec:
    """An `ArchSpec` from a path (.yaml/.yml/.json), a dict, YAML text, a one-line
    topology expression (`unet(channels=[32,64], blocks=T1L1G1)`) or a bundled name
    (`unet`, `hrnet`, `llm`, see `list_architectures()`)."""
    return load_source(source).spec
