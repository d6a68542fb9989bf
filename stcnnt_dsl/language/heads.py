"""What a task head can be: the kinds (tasks) with their own keys; the decoders and
their keys come from the registry (`register_head`, `stcnnt_dsl.registry.HEADS`). The
spec validates against these; the model graph resolves from them.

    heads:
      seg: {kind: segmentation, classes: 3}                      # decoder: conv
      seg2: {kind: segmentation, classes: 3, decoder: upernet}
      label: {kind: classification, classes: 5, pooling: conv_avg}
      clean: {kind: enhancement, out_channels: 1, residual: true}
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import either
from ..registry import HEADS, HeadDecoder, HeadKey

__all__ = ["HEAD_KINDS", "HeadKey", "HeadKind", "head_keys"]


@dataclass(frozen=True)
class HeadKind:
    """A task. `choice`: the key that picks the decoder (`decoder` or `pooling`), with
    its default; `size`: the required key that sets the output size (`classes` or
    `out_channels`); `common`: the keys every decoder of the task reads."""

    name: str
    size: str
    choice: str
    default: str
    common: dict[str, HeadKey]
    help: str

    @property
    def decoders(self) -> dict[str, HeadDecoder]:
        return {name: d for name, d in HEADS.items() if self.name in d.tasks}

    @property
    def choices(self) -> dict[str, str]:
        """The decoders of this task with what they are."""
        return {name: d.help for name, d in self.decoders.items()}

    @property
    def keys(self) -> dict[str, HeadKey]:
        """Every key of this task: the size, the choice, the common keys, then the keys
        of its decoders (`used_by` naming the decoders that read them)."""
        keys = {self.size: self.common[self.size],
                self.choice: HeadKey(self.default, either(self.choices))}  # fmt: skip
        keys.update((k, v) for k, v in self.common.items() if k != self.size)
        for name, decoder in self.decoders.items():
            for key, info in decoder.keys.items():
                used_by = (*keys[key].used_by, name) if key in keys else (name,)
                first = keys.get(key, info)
                keys[key] = HeadKey(first.default, first.help, used_by, first.type)
        return keys


HEAD_KINDS: dict[str, HeadKind] = {
    kind.name: kind
    for kind in (
        HeadKind(
            "segmentation", "classes", "decoder", "conv",
            {"classes": HeadKey(None, "number of classes: output [B, T, classes, H, W]")},
            "per-pixel classes",
        ),
        HeadKind(
            "classification", "classes", "pooling", "norm_avg",
            {"classes": HeadKey(None, "number of classes: output [B, classes]"),
             "per_frame": HeadKey(False, "one prediction per frame: [B, T, classes]")},
            "one label per sample (or per frame)",
        ),
        HeadKind(
            "enhancement", "out_channels", "decoder", "conv",
            {"out_channels": HeadKey(None, "output channels: [B, T, out_channels, H, W]"),
             "residual": HeadKey(False, "add the input to the output (out_channels must "
                                 "equal the input channels)")},
            "an image out (denoising, super-resolution, reconstruction)",
        ),
    )
}  # fmt: skip


def head_keys() -> tuple[str, ...]:
    """Every key a head may have (each kind accepts a subset): kind, then sorted."""
    return ("kind", *sorted({k for kind in HEAD_KINDS.values() for k in kind.keys}))
