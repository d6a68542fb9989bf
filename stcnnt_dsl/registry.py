"""The vocabulary every layer of the package shares: cell kinds, head decoders,
topologies and the named components (norms, activations) that options refer to.

A topology is one descriptor (`Topology`: its spec model, its graph builder, its stage
names) given to `register_topology`; a head decoder is one `HeadDecoder` (its keys, the
module arguments, the module, its costs, whether it reads the features) given to
`register_head`. The built-in ones are registered through the same calls
(`stcnnt_dsl.graph.topologies`, `stcnnt_dsl.graph.head_decoders`). The spec models,
the expression parser, the JSON Schema and `list_kinds()` read these tables. Plugins
(the entry-point group `stcnnt_dsl.plugins`) are loaded once, on the first use of a
registry (`load_plugins`).

This module sits below everything else and needs no torch: the language validates names
against it, the graph counts parameters through it, and the layer library builds modules
from it. Users add their own components with `register_norm` / `register_activation`;
the names then work in YAML, inline options, `Block(**options)`, `explain`, the JSON
Schema and did-you-mean suggestions, exactly like the built-in ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any

from .errors import SpecError, STCNNTError

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_KINDS",
    "BUILTIN_ACTIVATIONS",
    "BUILTIN_NORMS",
    "CELLS",
    "CELL_KINDS",
    "CONV_KINDS",
    "HEADS",
    "HEAD_TASKS",
    "KIND_TO_LETTER",
    "LETTER_TO_KIND",
    "NORMS",
    "PLUGIN_GROUP",
    "SPATIAL_KINDS",
    "TOPOLOGIES",
    "CellKind",
    "Component",
    "HeadContext",
    "HeadDecoder",
    "HeadKey",
    "Topology",
    "activation_names",
    "cell_kinds",
    "has_mixer_digit",
    "list_kinds",
    "load_plugins",
    "norm_names",
    "on_register",
    "register_activation",
    "register_cell",
    "register_head",
    "register_norm",
    "register_topology",
    "resolve_ref",
    "topology_names",
    "unregister",
]

LOCAL, GLOBAL, TEMPORAL, VIT, CONV2D, CONV3D = (
    "local",
    "global",
    "temporal",
    "vit",
    "conv2d",
    "conv3d",
)
CELL_KINDS: tuple[str, ...] = (LOCAL, GLOBAL, TEMPORAL, VIT, CONV2D, CONV3D)
SPATIAL_KINDS = frozenset({LOCAL, GLOBAL, VIT})
ATTENTION_KINDS = frozenset({LOCAL, GLOBAL, TEMPORAL, VIT})
CONV_KINDS = frozenset({CONV2D, CONV3D})
LETTER_TO_KIND = {"L": LOCAL, "G": GLOBAL, "T": TEMPORAL, "V": VIT, "C2": CONV2D, "C3": CONV3D}
KIND_TO_LETTER = {kind: letter for letter, kind in LETTER_TO_KIND.items()}


@dataclass(frozen=True)
class Component:
    """A named norm or activation. Built-in ones have `factory=None` (the layer library
    knows them); registered ones carry the user's factory. `mixes_frames`: a norm whose
    statistics span frames (batch norms in training, 3D norms), which breaks causal
    temporal attention. `fixed_size`: a norm tied to one (H, W), like `layer`."""

    name: str
    help: str
    factory: Callable[..., Any] | None = None
    mixes_frames: bool = False
    fixed_size: bool = False


BUILTIN_NORMS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("layer", "over (C, H, W) per frame, per-element affine; needs input_size",
                  fixed_size=True),
        Component("batch2d", "over (H, W) with B*T as the batch (batch statistics in training)",
                  mixes_frames=True),
        Component("batch3d", "over (T, H, W) per channel (batch statistics in training)",
                  mixes_frames=True),
        Component("instance2d", "over (H, W) per frame and channel"),
        Component("instance3d", "over (T, H, W) per channel", mixes_frames=True),
    )
}  # fmt: skip

BUILTIN_ACTIVATIONS: dict[str, Component] = {
    name: Component(name, help)
    for name, help in (
        ("gelu", "exact GELU"),
        ("gelu_tanh", "GELU, tanh approximation"),
        ("prelu", "PReLU with one learned slope (init 0.25)"),
        ("relu", "ReLU"),
        ("relu6", "ReLU6"),
        ("leaky_relu", "leaky ReLU, slope 0.1"),
        ("silu", "SiLU (swish)"),
        ("elu", "ELU"),
        ("selu", "SELU"),
        ("celu", "CELU"),
        ("tanh", "tanh"),
        ("identity", "no activation"),
    )
}

NORMS: dict[str, Component] = dict(BUILTIN_NORMS)
ACTIVATIONS: dict[str, Component] = dict(BUILTIN_ACTIVATIONS)

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _register(table: dict[str, Component], builtin: dict, what: str, name: Any,
              factory: Any, **flags: Any) -> None:  # fmt: skip
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            f"a {what} name is a lower-case identifier (letters, digits, _), got {name!r}",
            f"register_{what}",
        )
    if name in builtin:
        raise SpecError(
            f"{name!r} is a built-in {what}; register yours under another name",
            f"register_{what}",
        )
    if not callable(factory):
        raise SpecError(
            f"the {what} factory must be callable, got {type(factory).__name__}",
            f"register_{what}",
        )
    doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
    help = f"registered: {doc[0]}" if doc else f"registered {what}"
    table[name] = Component(name, help, factory, **flags)


def register_norm(name: str, factory: Callable[[int], Any], *, mixes_frames: bool = True) -> None:
    """Make `name` a value of the `norm` option: `factory(channels)` returns a module
    applied like `batch2d`, on [B*T, C, H, W]. `mixes_frames` (default True, the safe
    answer for a norm with batch statistics) says whether its output at one frame can
    depend on other frames; causal temporal attention refuses norms that do. Registering
    a name again replaces the factory."""
    _register(NORMS, BUILTIN_NORMS, "norm", name, factory, mixes_frames=bool(mixes_frames))


def register_activation(name: str, factory: Callable[[], Any]) -> None:
    """Make `name` a value of the `activation` option: `factory()` returns an
    activation module. Registering a name again replaces the factory."""
    _register(ACTIVATIONS, BUILTIN_ACTIVATIONS, "activation", name, factory)


def unregister(name: str) -> None:
    """Remove a registered norm, activation or topology (built-in names cannot be
    removed)."""
    for table, builtin in ((NORMS, BUILTIN_NORMS), (ACTIVATIONS, BUILTIN_ACTIVATIONS)):
        if name in table and name not in builtin:
            del table[name]
    for what, table, builtin in (("topology", TOPOLOGIES, BUILTIN_TOPOLOGIES),
                                 ("head", HEADS, BUILTIN_HEADS),
                                 ("cell", CELLS, CELL_KINDS)):  # fmt: skip
        if name in table and name not in builtin:
            del table[name]
            if what == "cell":
                del LETTER_TO_KIND[KIND_TO_LETTER.pop(name)]
                _NO_MIXER_DIGIT.discard(name)
            for listener in _LISTENERS[what]:
                listener(name, None)


def norm_names() -> tuple[str, ...]:
    return tuple(NORMS)


def activation_names() -> tuple[str, ...]:
    return tuple(ACTIVATIONS)


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class CellKind:
    """Everything the library needs to know about a cell kind, in one place.

    `name`: the kind (`local`); `letter`: how block strings write it (`L`, or `C2` for a
    kind without a mixer digit); `mixer`: whether a mixer digit 0/1 follows the letter;
    `options`: the cell-level options it reads besides those every cell reads (norm,
    activation, drop_path, padding, proj_kernel); `geometry(kind=, mixer=, in_channels=,
    out_channels=, options=, input_size=)`: its geometry (a subclass of
    `stcnnt_dsl.graph.geometry.CellGeometry`: parameters, FLOPs, saved activations,
    size rule, the options it reads given their values; `options` is a record with one
    attribute per option); `module(geometry)`: the torch module (or a
    `"package.module:Name"` string, imported on first build); `color`: its diagram fill."""

    name: str
    letter: str
    help: str
    geometry: Callable[..., Any]
    module: Callable[[Any], Any] | str
    options: tuple[str, ...] = ()
    mixer: bool = True
    color: str = "#eeeeee"


CELLS: dict[str, CellKind] = {}
_LETTER = re.compile(r"[A-Z][2-9]?")


def register_cell(cell: CellKind) -> None:
    """Add a cell kind: its letter joins the grammar, its options apply to it, and its
    geometry and module build it. Built-in kinds cannot be replaced."""
    where = "register_cell"
    if not isinstance(cell, CellKind):
        raise SpecError(f"register_cell takes a stcnnt_dsl.CellKind, got {type(cell).__name__}",
                        where)  # fmt: skip
    builtin = cell.name in CELL_KINDS
    if builtin and cell.name in CELLS:
        raise SpecError(f"{cell.name!r} is a built-in cell kind; use another name", where)
    if not _NAME.fullmatch(cell.name):
        raise SpecError(f"a cell kind is a lower-case identifier, got {cell.name!r}", where)
    if not _LETTER.fullmatch(cell.letter) or (cell.mixer and len(cell.letter) != 1):
        raise SpecError(
            f"a cell letter is one upper-case letter (followed by 0/1 in block strings), or a "
            f"letter and a digit 2-9 for a kind without a mixer digit (like C2), got "
            f"{cell.letter!r}",
            where,
        )
    clash = [k for letter, k in LETTER_TO_KIND.items() if letter[0] == cell.letter[0]
             and k != cell.name and (len(letter) == 1 or len(cell.letter) == 1
                                     or letter == cell.letter)]  # fmt: skip
    if clash and not builtin:
        raise SpecError(f"the letter {cell.letter!r} is taken by {clash[0]} cells", where)
    CELLS[cell.name] = cell
    LETTER_TO_KIND[cell.letter] = cell.name
    KIND_TO_LETTER[cell.name] = cell.letter
    if not cell.mixer:
        _NO_MIXER_DIGIT.add(cell.name)
    for listener in _LISTENERS["cell"]:
        listener(cell.name, cell)


_NO_MIXER_DIGIT = set(CONV_KINDS)


def has_mixer_digit(kind: str) -> bool:
    """Whether block strings write a mixer digit after the kind's letter (`L1`; not `C2`)."""
    return kind not in _NO_MIXER_DIGIT


def cell_kinds() -> tuple[str, ...]:
    """Every cell kind, built-in and registered."""
    return tuple(LETTER_TO_KIND.values())


# --------------------------------------------------------------------------- topologies


@dataclass(frozen=True)
class Topology:
    """Everything the library needs to know about a topology, in one place.

    `name`: its spec key (`unet:`) and expression name (`unet(...)`). `spec`: the pydantic
    model of its section (a subclass of `stcnnt_dsl.language.fields.OptionFields`, so the
    cell options cascade through it). `build(source, entry) -> ModelGraph`: the graph
    builder (`source.spec.body` is the validated section; `entry` is what the first stage
    reads). `stages`: the stage names it makes (for help and did-you-mean). `example`: a
    small model of it as an expression (the contract tests run every registered kind
    on its example)."""

    name: str
    spec: type
    build: Callable[..., Any]
    description: str
    stages: tuple[str, ...] = field(default=())  # patterns: ("encoder.{i}", "bridge")
    example: str = ""


TOPOLOGIES: dict[str, Topology] = {}
BUILTIN_TOPOLOGIES = ("unet", "hrnet", "llm", "mixed_unetr")  # by stcnnt_dsl.graph.topologies
_LISTENERS: dict[str, list[Callable[[str, Any], None]]] = {
    "topology": [], "head": [], "cell": [],
}  # fmt: skip


def on_register(what: str, listener: Callable[[str, Any], None]) -> None:
    """Call `listener(name, descriptor)` for every descriptor of `what` registered so far
    and from now on, and `listener(name, None)` when one is removed (the language adds
    and removes a topology's key of `ArchSpec` this way)."""
    _LISTENERS[what].append(listener)
    table = {"topology": TOPOLOGIES, "head": HEADS, "cell": CELLS}[what]
    for name, descriptor in list(table.items()):
        listener(name, descriptor)


def register_topology(topology: Topology) -> None:
    """Add (or replace) a topology: its spec key, expression name, graph builder and
    schema all come from `topology`."""
    if not isinstance(topology, Topology):
        raise SpecError(
            f"register_topology takes a stcnnt_dsl.Topology, got {type(topology).__name__}",
            "register_topology",
        )
    if not _NAME.fullmatch(topology.name) or topology.name in _RESERVED_KEYS:
        raise SpecError(
            f"a topology name is a lower-case identifier that is not a top-level spec key "
            f"({', '.join(_RESERVED_KEYS)}), got {topology.name!r}",
            "register_topology",
        )
    if topology.name in BUILTIN_TOPOLOGIES and topology.name in TOPOLOGIES:
        raise SpecError(
            f"{topology.name!r} is a built-in topology; register yours under another name",
            "register_topology",
        )
    TOPOLOGIES[topology.name] = topology
    for listener in _LISTENERS["topology"]:
        listener(topology.name, topology)


_RESERVED_KEYS = ("name", "description", "in_channels", "input_size", "defaults", "pre", "heads")


def topology_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(TOPOLOGIES)


# --------------------------------------------------------------------------- heads

HEAD_TASKS = ("segmentation", "classification", "enhancement")


@dataclass(frozen=True)
class HeadKey:
    """A key of a head: its default (None: required or derived), what it means, and the
    decoders (or poolings) that read it (empty: every one of the kind). `type`: an
    option type (`stcnnt_dsl.language.options`: `Int()`, `Bool()`, `Enum(...)`) that
    checks a value and describes it as JSON Schema; the built-in keys are checked by
    name (`stcnnt_dsl.language.head_spec`)."""

    default: Any
    help: str
    used_by: tuple[str, ...] = ()
    type: Any = None


@dataclass(frozen=True)
class HeadContext:
    """What a decoder's `args` sees: the head's spec path (`heads.seg`), its task, its
    resolved key values, the backbone's output channels and features (each with `name`,
    `channels`, `reduction`; finest first) and the model's input channels."""

    path: str
    task: str
    values: Mapping[str, Any]
    out_channels: int
    features: tuple[Any, ...]
    in_channels: int

    def fail(self, message: str, key: str) -> SpecError:
        """A `SpecError` at `heads.NAME.key` (raise it)."""
        return SpecError(f"{self.path}: {message}", f"{self.path}.{key}")


@dataclass(frozen=True)
class HeadDecoder:
    """Everything the library needs to know about a head decoder (or a classification
    pooling), in one place.

    `name`: the value of the head's `decoder:` (`pooling:` for classification); `tasks`:
    the head kinds it serves; `keys`: the keys only it reads (`HeadKey`). `args(ctx)`
    returns the module's keyword arguments from a `HeadContext` (raise `ctx.fail(...)`
    for a head that does not fit the backbone); `module(**args)` is the torch module
    (or a `"package.module:Name"` string, imported on first use so the graph needs no
    torch); `cost(args, features, t, h, w)` returns an object with `.params` and
    `.by_module` (FLOPs of one sample by module path); `reads`: `output` (the
    backbone's output) or `features` (every feature level); `check_batch(args, b, t)`
    returns why a training batch cannot run, or None. `example`: the keys of a small
    head with it (the contract tests run every registered kind on its example)."""

    name: str
    tasks: tuple[str, ...]
    help: str
    module: Callable[..., Any] | str
    args: Callable[[HeadContext], dict[str, Any]]
    cost: Callable[..., Any]
    reads: str = "output"
    keys: Mapping[str, HeadKey] = field(default_factory=dict)
    check_batch: Callable[[Mapping[str, Any], int, int], str | None] | None = None
    example: Mapping[str, Any] = field(default_factory=dict)

    @property
    def module_name(self) -> str:
        """The module's class name (what `explain` shows)."""
        if isinstance(self.module, str):
            return self.module.rsplit(":", 1)[-1]
        return getattr(self.module, "__name__", type(self.module).__name__)


HEADS: dict[str, HeadDecoder] = {}
BUILTIN_HEADS = ("conv", "upernet", "norm_avg", "conv_avg", "multidepth", "unetr")


def register_head(decoder: HeadDecoder) -> None:
    """Add (or replace) a head decoder: its name becomes a value of `decoder:` (or
    `pooling:`) for the heads of its tasks, with its keys, module and costs."""
    where = "register_head"
    if not isinstance(decoder, HeadDecoder):
        raise SpecError(
            f"register_head takes a stcnnt_dsl.HeadDecoder, got {type(decoder).__name__}", where
        )
    if not _NAME.fullmatch(decoder.name):
        raise SpecError(f"a decoder name is a lower-case identifier, got {decoder.name!r}", where)
    if decoder.name in BUILTIN_HEADS and decoder.name in HEADS:
        raise SpecError(
            f"{decoder.name!r} is a built-in head decoder; register yours under another name",
            where,
        )
    unknown = [t for t in decoder.tasks if t not in HEAD_TASKS]
    if not decoder.tasks or unknown:
        raise SpecError(
            f"a decoder's tasks are some of {', '.join(HEAD_TASKS)}, got {decoder.tasks!r}",
            where,
        )
    if decoder.reads not in ("output", "features"):
        raise SpecError(f"reads is output or features, got {decoder.reads!r}", where)
    HEADS[decoder.name] = decoder
    for listener in _LISTENERS["head"]:
        listener(decoder.name, decoder)


def resolve_ref(ref: Any) -> Any:
    """A callable, or the object a `"package.module:Name"` string names (imported now)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj: Any = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- plugins

PLUGIN_GROUP = "stcnnt_dsl.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Load every plugin of the entry-point group `stcnnt_dsl.plugins` once: an entry
    point names a module (importing it registers its kinds) or a callable (called with
    no arguments). A plugin that fails is one `STCNNTError` naming it."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # a failing plugin is reported once, not on every call
    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded):
                loaded()
        except Exception as err:
            raise STCNNTError(
                f"the stcnnt_dsl plugin {entry.name!r} ({entry.value}, from "
                f"{entry.dist.name if entry.dist else 'an unknown package'}) failed to load: "
                f"{type(err).__name__}: {err}; fix or uninstall that package"
            ) from err


def list_kinds() -> dict[str, list[str]]:
    """The registered kinds by extension point (plugins included): cell letters, head
    decoders, topologies, norms and activations."""
    load_plugins()
    return {
        "cells": list(LETTER_TO_KIND),
        "heads": list(HEADS),
        "topologies": list(TOPOLOGIES),
        "norms": list(NORMS),
        "activations": list(ACTIVATIONS),
    }
