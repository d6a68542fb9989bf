"""Strict, safe YAML reading with positions, and canonical YAML writing.

PyYAML's safe loader still resolves YAML 1.1 surprises (`yes`, `on`, `0o17`, sexagesimal
`1:30`), silently keeps the last of duplicate keys, and expands aliases (the
"billion laughs" bomb). Here the document is *composed* (nodes only, no objects built)
and converted by our own rules:

- scalars: `null`/`~`/empty, `true`/`false`, decimal ints, decimal floats; everything
  else (including `yes`, `no`, `on`, `off`) is a string; quoted scalars are strings;
- explicit tags (`!!python/object`, `!foo`, even `!!str`), anchors/aliases and merge
  keys (`<<`) are errors;
- duplicate keys, non-string keys, too deep nesting and too large documents are errors.

Every value's (line, column) is recorded under its spec path (`unet.channels[1]`), so
later validation errors can point into the file.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import DSLSyntaxError, SpecError

__all__ = ["MAX_DEPTH", "MAX_NODES", "MAX_YAML_BYTES", "Positions", "dump_yaml", "load_yaml"]


class Positions(dict):
    """(line, column) of every value by spec path (`unet.channels[1]`); `.keys_at`
    holds the position of the key of each mapping entry, so an error about a key (an
    unknown one, say) points at the key and an error about a value at the value."""

    def __init__(self, values: dict | None = None, keys: dict | None = None) -> None:
        super().__init__(values or {})
        self.keys_at: dict[str, tuple[int, int]] = dict(keys or {})

    def find(self, path: str, *, key: bool = False) -> tuple[int, int] | None:
        """The position of `path` (its key with `key=True`), or of its nearest
        ancestor that has one."""
        if key and path in self.keys_at:
            return self.keys_at[path]
        while path:
            if path in self:
                return self[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None


MAX_YAML_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_NODES = 100_000

_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)$")
_FLOAT = re.compile(
    r"[-+]?((\d[\d_]*)?\.\d*([eE][-+]?\d+)?|\d[\d_]*[eE][-+]?\d+|\.(inf|Inf|INF)|\.(nan|NaN|NAN))$"
)
_DEFAULT_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:merge",
    "tag:yaml.org,2002:value",
    "tag:yaml.org,2002:binary",
    "tag:yaml.org,2002:omap",
    "tag:yaml.org,2002:pairs",
    "tag:yaml.org,2002:set",
}


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Converter:
    def __init__(self, file: str | None) -> None:
        self.file = file
        self.positions = Positions()
        self.seen: set[int] = set()
        self.count = 0

    def fail(self, message: str, node: Node, path: str) -> SpecError:
        line, col = _pos(node)
        return SpecError(message, path, file=self.file or "<yaml>", line=line, column=col)

    def convert(self, node: Node, path: str, depth: int) -> Any:
        if id(node) in self.seen:
            raise self.fail(
                "YAML anchors and aliases (&name / *name) are not supported: write the "
                "value out (aliases can expand exponentially)",
                node,
                path,
            )
        self.seen.add(id(node))
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(f"document has more than {MAX_NODES} values", node, path)
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels", node, path)
        if node.tag not in _DEFAULT_TAGS or (isinstance(node, ScalarNode) and _explicit_tag(node)):
            raise self.fail(
                f"YAML tags are not allowed (found {node.tag!r}); an architecture file "
                "holds plain values only",
                node,
                path,
            )
        self.positions.setdefault(path, _pos(node))
        if isinstance(node, ScalarNode):
            try:
                return self.scalar(node)
            except ValueError:  # more digits than Python converts to an int
                raise self.fail(
                    f"number too long ({len(node.value)} characters)", node, path
                ) from None
        if isinstance(node, SequenceNode):
            return [
                self.convert(item, _child(path, i), depth + 1) for i, item in enumerate(node.value)
            ]
        if isinstance(node, MappingNode):
            return self.mapping(node, path, depth)
        raise self.fail(f"unsupported YAML node {type(node).__name__}", node, path)

    def mapping(self, node: MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.fail("YAML merge keys (<<) are not supported", key_node, path)
            if not isinstance(key_node, ScalarNode):
                raise self.fail("mapping keys must be plain names", key_node, path)
            key = key_node.value
            here = _child(path, key)
            if key in out:
                line, _ = self.positions.get(here, (0, 0))
                raise self.fail(
                    f"duplicate key {key!r} (first defined on line {line})", key_node, here
                )
            self.positions[here] = _pos(value_node)
            self.positions.keys_at[here] = _pos(key_node)
            out[key] = self.convert(value_node, here, depth + 1)
            self.positions[here] = _pos(value_node)
        return out

    @staticmethod
    def scalar(node: ScalarNode) -> Any:
        text = node.value
        if node.style in ("'", '"', "|", ">"):
            return text
        if text in ("", "~", "null", "Null", "NULL"):
            return None
        if text in ("true", "True", "TRUE"):
            return True
        if text in ("false", "False", "FALSE"):
            return False
        if _INT.match(text):
            return int(text.replace("_", ""))
        if _FLOAT.match(text):
            lowered = text.lower().lstrip("+")
            if lowered.endswith(".inf"):
                return float("-inf") if lowered.startswith("-") else float("inf")
            if lowered.endswith(".nan"):
                return float("nan")
            return float(text.replace("_", ""))
        return text


def _explicit_tag(node: ScalarNode) -> bool:
    # PyYAML keeps implicit=(plain, quoted) resolution flags on scalar events only; a
    # composed node with an explicit tag has a tag that differs from what its text
    # resolves to. `!!str 5` resolves to int but is tagged str: treat any mismatch as
    # explicit.
    resolved = yaml.resolver.Resolver().resolve(ScalarNode, node.value, (True, False))
    return node.style is None and node.tag != resolved


# libyaml's parser when installed (10-20x faster than the pure-Python one on big input).
_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPENS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSES = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _prescan(text: str, file: str | None) -> None:
    """Refuse aliases, anchors, deep nesting and too many values from the event stream.

    Events come from a flat state machine (no recursion, no nodes kept), so a hostile
    document (an alias bomb, 10,000 nested brackets) is refused as soon as the parser
    reaches the problem, in bounded time and memory, before anything is composed.
    """

    def fail(message: str, event: yaml.Event) -> SpecError:
        mark = event.start_mark
        return SpecError(message, file=file or "<yaml>", line=mark.line + 1, column=mark.column + 1)

    depth = values = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise fail(
                "YAML anchors and aliases (&name / *name) are not supported: write the "
                "value out (aliases can expand exponentially)",
                event,
            )
        if isinstance(event, _OPENS):
            depth += 1
            if depth > MAX_DEPTH:
                raise fail(f"nesting deeper than {MAX_DEPTH} levels", event)
        elif isinstance(event, _CLOSES):
            depth -= 1
            continue
        elif not isinstance(event, yaml.ScalarEvent):
            continue
        values += 1
        if values > MAX_NODES:
            raise fail(f"document has more than {MAX_NODES} values", event)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    if 1 <= line <= len(lines) and 1 <= column <= len(lines[line - 1]):
        return lines[line - 1][column - 1]
    return ""


def load_yaml(text: str, *, file: str | None = None) -> tuple[Any, Positions]:
    """Parse YAML text strictly; return (plain value, positions by spec path)."""
    if len(text) > MAX_YAML_BYTES or len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise SpecError(
            f"YAML document is larger than {MAX_YAML_BYTES // 1000} kB; an architecture "
            "file is a few hundred bytes",
            file=file,
        )
    try:
        _prescan(text, file)
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = err.problem or err.context
        if "nesting depth" in str(problem):  # libyaml's own limit on flow brackets
            problem = f"nesting deeper than {MAX_DEPTH} levels"
        elif "\t" in str(problem) or _char_at(text, line, col) == "\t":
            problem = (
                "a tab character: YAML does not allow tabs for indentation; indent with spaces"
            )
        raise DSLSyntaxError(
            f"invalid YAML: {problem}",
            text=text,
            line=line,
            column=col,
            source=file,
        ) from None
    except yaml.YAMLError as err:
        raise DSLSyntaxError(
            f"invalid YAML: {err}", text=text, line=1, column=1, source=file
        ) from None
    except RecursionError:
        raise SpecError(f"YAML nesting deeper than {MAX_DEPTH} levels", file=file) from None
    if node is None:
        return None, Positions()
    converter = _Converter(file)
    value = converter.convert(node, "", 0)
    return value, converter.positions


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of scalars."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data) or all(
        isinstance(v, list) and all(not isinstance(i, (dict, list)) for i in v) for v in data
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    node = dumper.represent_str(data)
    # Quote strings that our loader would read as something else.
    try:
        other = _Converter.scalar(ScalarNode("tag:yaml.org,2002:str", data)) != data
    except ValueError:  # a digit string too long for int(): quote it as well
        other = True
    if other:
        node.style = '"'
    return node


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)
_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """Canonical YAML text of plain data (key order kept)."""
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
