"""Task heads in the model graph: a head is a node like any other, reading the backbone's
output or its features, with its options resolved (library default < the head's keys),
its module and constructor arguments, and its costs from `graph.head_costs`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import SpecError
from ..language.cascade import Resolved
from ..language.heads import HEAD_KINDS
from ..language.spec import HeadSpec
from ..registry import HEADS, HeadContext, HeadDecoder
from . import head_decoders  # noqa: F401  (registers the built-in decoders)
from .model import Feature
from .nodes import INPUT, Node

__all__ = ["HeadNode", "head_node"]


@dataclass(frozen=True)
class HeadNode(Node):
    """A head named `heads.NAME`: `task` (segmentation, classification, enhancement),
    `decoder` (the registered `HeadDecoder`'s name), `module` (its module's class name)
    built with `args`, `options` resolved with their sources (for explain), `reads`
    "output" or "features"."""

    task: str = ""
    decoder: str = ""
    module: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Resolved] = field(default_factory=dict)
    reads: str = "output"
    features: tuple[Feature, ...] = ()
    backbone_channels: int = 0

    kind: ClassVar[str] = "head"

    @property
    def head_name(self) -> str:
        return self.name.removeprefix("heads.")

    @property
    def descriptor(self) -> HeadDecoder:
        return HEADS[self.decoder]

    def _cost(self, t: int, h: int, w: int) -> Any:
        return self.descriptor.cost(self.args, self.features, t, h, w)

    def params(self) -> dict[str, int]:
        # parameters do not depend on the input size: price any valid one
        return {"": self._cost(1, 64, 64).params}

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        return dict(self._cost(t, h, w).by_module)

    def saved(self, frames: int, t: int, h: int, w: int) -> dict[str, int]:
        """What it reads and what it outputs (an estimate: heads are small next to the
        backbone, whose saved activations are counted cell by cell)."""
        out = 1
        for n in self.output_shape((max(frames // max(t, 1), 1), t, 0, h, w)):
            out *= n
        read = self.backbone_channels * frames * h * w
        if self.reads == "features":
            read = sum(f.channels * frames * (h // f.reduction) * (w // f.reduction)
                       for f in self.features)  # fmt: skip
        return {"": read + out}

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The head's output for a model input (B, T, C, H, W)."""
        b, t, _, h, w = shape
        if self.task == "classification":
            classes = self.args["classes"]
            return (b, t, classes) if self.args["per_frame"] else (b, classes)
        size = self.args.get("classes", self.args.get("out_channels"))
        fixed = self.args.get("size")  # the upernet decoder's size and frames
        if fixed is not None:
            t, h, w = (t, *fixed) if len(fixed) == 2 else fixed
        if self.args.get("frames") == "first":
            t = 1
        return (b, t, size, h, w)

    def check_batch(self, b: int, t: int) -> None:
        """A `SpecError` when a training batch of b x t cannot run this head (e.g.
        UperNet's batch norm after the 1x1 pooling bin needs more than one value)."""
        check = self.descriptor.check_batch
        problem = check(self.args, b, t) if check is not None else None
        if problem is not None:
            raise SpecError(f"{self.name}: {problem}", f"{self.name}.bins")


def _resolve(name: str, spec: HeadSpec) -> tuple[str, str, dict[str, Resolved]]:
    kind = HEAD_KINDS[spec.kind]
    given = spec.keys()
    choice = given.get(kind.choice, kind.keys[kind.choice].default)
    out: dict[str, Resolved] = {}
    for key, info in kind.keys.items():
        if info.used_by and choice not in info.used_by:
            continue
        info = HEADS[choice].keys.get(key, info)  # the decoder's own default
        if key in given:
            out[key] = Resolved(given[key], "head", f"heads.{name}.{key}")
        else:
            out[key] = Resolved(info.default, "library", "")
    return spec.kind, choice, out


def head_node(
    name: str,
    spec: HeadSpec,
    *,
    output: str,
    out_channels: int,
    features: Sequence[Feature],
    in_channels: int,
) -> HeadNode:
    """The node of head `name`, reading the backbone's `output` node (with
    `out_channels`) or its `features`; a `SpecError` at `heads.NAME.key` for a head that
    does not fit this backbone."""
    task, choice, options = _resolve(name, spec)
    here = f"heads.{name}"
    decoder = HEADS[choice]
    ctx = HeadContext(here, task, {k: r.value for k, r in options.items()}, out_channels,
                      tuple(features), in_channels)  # fmt: skip
    args = decoder.args(ctx)
    if args.get("residual") and args["out_channels"] != in_channels:
        raise SpecError(
            f"{here}: residual adds the input to the output, so out_channels must be the "
            f"input's {in_channels} channels, got {args['out_channels']}",
            f"{here}.residual",
        )
    reads = decoder.reads
    inputs = (INPUT, output) if reads == "output" else (INPUT, *(f.name for f in features))
    size = args.get("classes", args.get("out_channels"))
    return HeadNode(
        name=here, inputs=inputs, out_channels=size, scale=1,
        label=f"{task} ({choice})", path=here, task=task, decoder=choice,
        module=decoder.module_name, args=args, options=options, reads=reads,
        features=tuple(features), backbone_channels=out_channels,
    )  # fmt: skip
