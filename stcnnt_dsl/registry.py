"""The vocabulary every layer of the package shares: cell kinds, head decoders,
topologies and the named components (norms, activations) that options refer to.

A topology is one descriptor (`Topology`: its spec model, its graph builder, its stage
names) given to `register_topology`; the built-in ones are registered through the same
call (`stcnnt_dsl.graph.topologies`). The language's `ArchSpec`, the expression parser,
the JSON Schema and `list_kinds()` read this table. Plugins (the entry-point group
`stcnnt_dsl.plugins`) are loaded once, on the first use of a registry (`load_plugins`).

This module sits below everything else and needs no torch: the language validates names
against it, the graph counts parameters through it, and the layer library builds modules
from it. Users add their own components with `register_norm` / `register_activation`;
the names then work in YAML, inline options, `Block(**options)`, `explain`, the JSON
Schema and did-you-mean suggestions, exactly like the built-in ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .errors import SpecError, STCNNTError

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_KINDS",
    "BUILTIN_ACTIVATIONS",
    "BUILTIN_NORMS",
    "CELL_KINDS",
    "CONV_KINDS",
    "KIND_TO_LETTER",
    "LETTER_TO_KIND",
    "NORMS",
    "PLUGIN_GROUP",
    "SPATIAL_KINDS",
    "TOPOLOGIES",
    "Component",
    "Topology",
    "activation_names",
    "list_kinds",
    "load_plugins",
    "norm_names",
    "on_register",
    "register_activation",
    "register_norm",
    "register_topology",
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
    if name in TOPOLOGIES and name not in BUILTIN_TOPOLOGIES:
        del TOPOLOGIES[name]
        for listener in _LISTENERS["topology"]:
            listener(name, None)


def norm_names() -> tuple[str, ...]:
    return tuple(NORMS)


def activation_names() -> tuple[str, ...]:
    return tuple(ACTIVATIONS)


# --------------------------------------------------------------------------- topologies


@dataclass(frozen=True)
class Topology:
    """Everything the library needs to know about a topology, in one place.

    `name`: its spec key (`unet:`) and expression name (`unet(...)`). `spec`: the pydantic
    model of its section (a subclass of `stcnnt_dsl.language.fields.OptionFields`, so the
    cell options cascade through it). `build(source, entry) -> ModelGraph`: the graph
    builder (`source.spec.body` is the validated section; `entry` is what the first stage
    reads). `stages`: the stage names it makes (for help and did-you-mean)."""

    name: str
    spec: type
    build: Callable[..., Any]
    description: str
    stages: tuple[str, ...] = field(default=())  # patterns: ("encoder.{i}", "bridge")


TOPOLOGIES: dict[str, Topology] = {}
BUILTIN_TOPOLOGIES = ("unet", "hrnet", "llm", "mixed_unetr")  # by stcnnt_dsl.graph.topologies
_LISTENERS: dict[str, list[Callable[[Any], None]]] = {"topology": []}


def on_register(what: str, listener: Callable[[str, Any], None]) -> None:
    """Call `listener(name, descriptor)` for every descriptor of `what` registered so far
    and from now on, and `listener(name, None)` when one is removed (the language adds
    and removes a topology's key of `ArchSpec` this way)."""
    _LISTENERS[what].append(listener)
    for name, descriptor in list(TOPOLOGIES.items()):
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
        "heads": [],
        "topologies": list(TOPOLOGIES),
        "norms": list(NORMS),
        "activations": list(ACTIVATIONS),
    }
