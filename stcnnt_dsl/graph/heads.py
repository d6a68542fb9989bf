"""Task heads in the model graph: a head is a node like any other, reading the backbone's
output or its features, with its options resolved (library default < the head's keys),
its module and constructor arguments, and its costs from `graph.head_costs`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import SpecError
from ..language.heads import HEAD_KINDS
from ..language.options import Resolved
from ..language.spec import HeadSpec
from . import head_costs
from .model import Feature
from .nodes import INPUT, Node

__all__ = ["HeadNode", "head_node"]

# (kind, decoder or pooling) -> the module in stcnnt_dsl.nn.heads
_MODULES = {
    ("segmentation", "conv"): "ConvHead",
    ("segmentation", "upernet"): "UperNetHead",
    ("classification", "norm_avg"): "NormAvgHead",
    ("classification", "conv_avg"): "ConvAvgHead",
    ("enhancement", "conv"): "ConvHead",
    ("enhancement", "multidepth"): "MultiDepthHead",
    ("enhancement", "unetr"): "UNETRHead",
}


@dataclass(frozen=True)
class HeadNode(Node):
    """A head named `heads.NAME`: `task` (segmentation, classification, enhancement),
    `module` (the class in `stcnnt_dsl.nn.heads`) built with `args`, `options` resolved
    with their sources (for explain), `reads` "output" or "features"."""

    task: str = ""
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

    def _cost(self, t: int, h: int, w: int) -> head_costs.HeadCost:
        geometry = dict(batch=1, frames=t, height=h, width=w)
        a = self.args
        if self.module == "ConvHead":
            return head_costs.conv_head_cost(a["in_channels"], a["out_channels"], **geometry)
        if self.module == "NormAvgHead":
            return head_costs.norm_avg_head_cost(
                a["in_channels"], a["classes"], batch=1, frames=t, per_frame=a["per_frame"]
            )
        if self.module == "ConvAvgHead":
            return head_costs.conv_avg_head_cost(
                a["in_channels"], a["classes"], batch=1, frames=t, hidden=a["hidden"],
                per_frame=a["per_frame"],
            )  # fmt: skip
        reductions = [f.reduction for f in self.features]
        if self.module == "MultiDepthHead":
            return head_costs.multi_depth_head_cost(
                a["feature_channels"], a["out_channels"], depth=a["depth"],
                reductions=reductions, **geometry,
            )  # fmt: skip
        if self.module == "UperNetHead":
            if a.get("frames") == "first":
                geometry["frames"] = 1
            return head_costs.upernet_head_cost(
                a["feature_channels"], a["classes"], hidden=a["hidden"], bins=a["bins"],
                mode=a["mode"], reductions=reductions,
                shared_smooth=a.get("shared_smooth", False), **geometry,
            )  # fmt: skip
        return head_costs.unetr_head_cost(
            a["feature_channels"], a["out_channels"], reductions=a["reductions"],
            in_channels=a["in_channels"], mode=a["mode"], **geometry,
        )  # fmt: skip

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
        fixed = self.args.get("size")
        if fixed is not None:
            t, h, w = (t, *fixed) if len(fixed) == 2 else fixed
        if self.args.get("frames") == "first":
            t = 1
        return (b, t, size, h, w)

    def check_batch(self, b: int, t: int) -> None:
        """UperNet's batch norm after the 1x1 pooling bin needs more than one value."""
        if self.module != "UperNetHead" or 1 not in self.args["bins"]:
            return
        samples = b * (t if self.args["mode"] == "2d" else 1)
        if samples == 1:
            raise SpecError(
                f"{self.name}: the upernet decoder's batch norm after the 1x1 pooling bin needs "
                f"more than one sample in training (B*T = {b}*{t} in mode 2d); use a larger "
                "batch, drop bin 1, or mode 3d with B > 1",
                f"{self.name}.bins",
            )


def _resolve(name: str, spec: HeadSpec) -> tuple[str, str, dict[str, Resolved]]:
    kind = HEAD_KINDS[spec.kind]
    given = spec.keys()
    choice = given.get(kind.choice, kind.keys[kind.choice].default)
    out: dict[str, Resolved] = {}
    for key, info in kind.keys.items():
        if info.used_by and choice not in info.used_by:
            continue
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
    v = {k: r.value for k, r in options.items()}
    here = f"heads.{name}"
    module = _MODULES[(task, choice)]
    channels = [f.channels for f in features]
    reductions = [f.reduction for f in features]
    reads = "output"
    if module == "ConvHead":
        size = v["classes"] if task == "segmentation" else v["out_channels"]
        args: dict[str, Any] = {"in_channels": out_channels, "out_channels": size,
                                "residual": v.get("residual", False)}  # fmt: skip
    elif module == "NormAvgHead":
        args = {"in_channels": out_channels, "classes": v["classes"], "per_frame": v["per_frame"]}
    elif module == "ConvAvgHead":
        args = {"in_channels": out_channels, "classes": v["classes"], "hidden": v["hidden"],
                "per_frame": v["per_frame"]}  # fmt: skip
    elif module == "MultiDepthHead":
        reads = "features"
        if v["depth"] > len(channels):
            raise SpecError(
                f"{here}: the multidepth decoder reads the {v['depth']} deepest features but "
                f"this backbone has {len(channels)} ({', '.join(f.name for f in features)}); "
                f"set depth to at most {len(channels)}",
                f"{here}.depth",
            )
        args = {"feature_channels": channels, "out_channels": v["out_channels"],
                "depth": v["depth"], "residual": v["residual"]}  # fmt: skip
    elif module == "UperNetHead":
        reads = "features"
        if v["reads"] == "output":  # the output alone, as the one feature
            features = [Feature(output, out_channels, 1)]
            channels = [out_channels]
        if v["frames"] == "first" and v["mode"] == "3d":
            raise SpecError(
                f"{here}: frames: first (frame 0 only) is a mode 2d option; drop it or use mode 2d",
                f"{here}.frames",
            )
        size_given = v["size"]
        if size_given is not None and len(size_given) != (2 if v["mode"] == "2d" else 3):
            raise SpecError(
                f"{here}: size must be [H, W] in mode 2d and [T, H, W] in mode 3d, got "
                f"{list(size_given)} with mode {v['mode']}",
                f"{here}.size",
            )
        if len(v["bins"]) > channels[-1]:
            raise SpecError(
                f"{here}: the deepest feature's {channels[-1]} channels cannot be split among "
                f"{len(v['bins'])} pooling branches; use at most {channels[-1]} bins",
                f"{here}.bins",
            )
        args = {"feature_channels": channels, "classes": v["classes"],
                "hidden": v["hidden"] or channels[0], "bins": tuple(v["bins"]),
                "mode": v["mode"], "dropout": v["dropout"],
                "bottleneck_padding": v["bottleneck_padding"],
                "shared_smooth": v["shared_smooth"], "top_down": v["top_down"],
                "frames": v["frames"], "size": size_given, "reads": v["reads"]}  # fmt: skip
    else:  # UNETRHead
        reads = "features"
        for i in range(len(reductions) - 1):
            if reductions[i + 1] % reductions[i]:
                raise SpecError(
                    f"{here}: the unetr decoder needs each feature an integer factor coarser "
                    f"than the one before; this backbone's reductions are {reductions}",
                    f"{here}.decoder",
                )
        args = {"feature_channels": channels, "out_channels": v["out_channels"],
                "reductions": reductions,
                "in_channels": in_channels if reductions[0] != 1 else None,
                "mode": v["mode"], "residual": v["residual"]}  # fmt: skip
    if args.get("residual") and args["out_channels"] != in_channels:
        raise SpecError(
            f"{here}: residual adds the input to the output, so out_channels must be the "
            f"input's {in_channels} channels, got {args['out_channels']}",
            f"{here}.residual",
        )
    inputs = (INPUT, output) if reads == "output" else (INPUT, *(f.name for f in features))
    size = args.get("classes", args.get("out_channels"))
    return HeadNode(
        name=here, inputs=inputs, out_channels=size, scale=1,
        label=f"{task} ({choice})", path=here, task=task, module=module, args=args,
        options=options, reads=reads, features=tuple(features), backbone_channels=out_channels,
    )  # fmt: skip
