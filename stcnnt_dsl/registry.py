"""The vocabulary every layer of the package shares: cell kinds and the named components
(norms, activations) that options refer to.

This module sits below everything else and needs no torch: the language validates names
against it, the graph counts parameters through it, and the layer library builds modules
from it. Users add their own components with `register_norm` / `register_activation`;
the names then work in YAML, inline options, `Block(**options)`, `explain`, the JSON
Schema and did-you-mean suggestions, exactly like the built-in ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import SpecError

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
    "SPATIAL_KINDS",
    "Component",
    "activation_names",
    "norm_names",
    "register_activation",
    "register_norm",
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
    """Remove a registered norm or activation (built-in names cannot be removed)."""
    for table, builtin in ((NORMS, BUILTIN_NORMS), (ACTIVATIONS, BUILTIN_ACTIVATIONS)):
        if name in table and name not in builtin:
            del table[name]


def norm_names() -> tuple[str, ...]:
    return tuple(NORMS)


def activation_names() -> tuple[str, ...]:
    return tuple(ACTIVATIONS)
