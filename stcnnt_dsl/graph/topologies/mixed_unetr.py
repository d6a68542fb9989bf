"""Mixed U-Netr (the reference's `STCNNT_Mixed_Unetr`): an ST-CNNT encoder and bridge,
a convolutional decoder.

Level i runs at H/2^i with channels[i] (= C*2^i): encoder block i, a convolution unit on
its skip (`skips.i`, residual), 2x down-sampling by patch merging; the bridge at H/2^L
keeps channels[-1]. Going up, level i's up-sampled input has channels[max(i, 1)]
channels: the attention gate (levels >= 1) weighs the skip by it, then
`decoder.i` (a convolution unit, or with `decoder_blocks` a block of level i's block
string) takes [skip, up-sampled]. The channel counts follow the reference: `decoder.i`
gives channels[max(i - 1, 1)] for i >= 1 and `decoder.0` keeps its
channels[0] + channels[1] = 3C input channels, the model's output.

With `halve_time: k`, the down-sampling of levels 0..k-1 halves T too (2x2x2 patch
merging) and their up-sampling doubles it back (trilinear): level i runs on
T / 2^min(i, k) frames.

Names: `encoder.i`, `skips.i`, `down.i`, `bridge`, `up.i`, `gates.i`, `cat:decoder.i`,
`decoder.i`.
"""

from __future__ import annotations

from dataclasses import replace

from ...language.options import resolve_options
from ...language.spec import MixedUNetrSpec, SpecSource
from ..model import Feature, Layout, ModelGraph
from ..nodes import ConvUnitNode, GateNode, MergeNode, Node, ResampleNode
from .common import Entry, Stage, apply_overrides, block_path, broadcast, stage_layers

__all__ = ["build_mixed_unetr", "decoder_channels"]

_UNIT_OPTIONS = ("norm", "activation", "padding")


def decoder_channels(channels: list[int]) -> tuple[list[int], list[int]]:
    """(up-sampled channels per level, decoder output channels per level) of the
    reference's mixed U-Netr."""
    n = len(channels)
    up = [channels[max(i, 1)] for i in range(n)]
    out = [channels[0] + channels[1]] + [channels[max(i - 1, 1)] for i in range(1, n)]
    return up, out


def _stages(source: SpecSource, body: MixedUNetrSpec, entry: Entry) -> list[Stage]:
    n = body.num_levels
    ch = broadcast(body.channels, n)
    blocks = broadcast(body.blocks, n + 1)
    if len(blocks) == n:  # one per level: the bridge uses the last
        blocks.append(blocks[-1])
    enc = body.encoder or [None] * n

    def stage(name, label, spec, path, index, cin, cout, scale) -> Stage:
        block = spec.blocks if spec is not None and spec.blocks is not None else blocks[index]
        return Stage(
            name=name, label=label, path=path, block=block,
            block_path=block_path("mixed_unetr", body.blocks, index, spec, path),
            in_channels=cin, out_channels=cout, scale=scale,
            layers=stage_layers(source, spec, path, scale), meta={"level": index},
        )  # fmt: skip

    stages = [
        stage(f"encoder.{i}", f"encoder level {i}", enc[i], f"mixed_unetr.encoder[{i}]", i,
              entry.channels if i == 0 else ch[i - 1], ch[i], 2**i)
        for i in range(n)
    ]  # fmt: skip
    stages.append(stage("bridge", "bridge", body.bridge, "mixed_unetr.bridge", n, ch[-1],
                        ch[-1], 2**n))  # fmt: skip
    if body.decoder_blocks:
        up, out = decoder_channels(ch)
        dec, key = (body.decoder, "decoder") if body.decoder else (enc, "encoder")
        stages += [
            stage(f"decoder.{i}", f"decoder level {i}", dec[i], f"mixed_unetr.{key}[{i}]", i,
                  ch[i] + up[i], out[i], 2**i)
            for i in reversed(range(n))
        ]  # fmt: skip
    return apply_overrides(source, stages)


def build_mixed_unetr(source: SpecSource, entry: Entry) -> ModelGraph:
    body: MixedUNetrSpec = source.spec.mixed_unetr
    n = body.num_levels
    ch = broadcast(body.channels, n)
    up_ch, dec_ch = decoder_channels(ch)
    stages = {s.name: s for s in _stages(source, body, entry)}
    unit = resolve_options(_UNIT_OPTIONS, stage_layers(source, None, "mixed_unetr", 1))
    size = source.spec.input_size
    halve = body.halve_time

    def frames(level: int) -> int:
        """1/scale of T at `level`."""
        return 2 ** min(level, halve)

    def conv_unit(name, label, inputs, cin, cout, level, residual) -> ConvUnitNode:
        scale = 2**level
        return ConvUnitNode(
            name=name, inputs=inputs, out_channels=cout, scale=scale, label=label,
            path="mixed_unetr", meta={"level": level}, in_channels=cin, residual=residual,
            temporal=body.conv == "3d", norm=unit["norm"].value,
            activation=unit["activation"].value, padding=unit["padding"].value,
            input_size=None if size is None else (size[0] // scale, size[1] // scale),
            time_scale=frames(level),
        )  # fmt: skip

    nodes: list[Node] = []
    previous = entry.name
    for i in range(n):
        enc = stages[f"encoder.{i}"]
        nodes.append(replace(enc.node(source, [previous]), time_scale=frames(i)))
        if body.skip_units:
            nodes.append(conv_unit(f"skips.{i}", "skip unit", (enc.name,), ch[i], ch[i], i, True))
        nodes.append(ResampleNode(
            name=f"down.{i}", inputs=(enc.name,), out_channels=ch[i], scale=2 ** (i + 1),
            label="patch merge" + " (T too)" * (i < halve), path="mixed_unetr",
            meta={"level": i}, op="merge", steps=1, in_channels=ch[i], in_scale=2**i,
            temporal=i < halve, time_scale=frames(i + 1),
        ))  # fmt: skip
        previous = f"down.{i}"
    nodes.append(replace(stages["bridge"].node(source, [previous]), time_scale=frames(n)))
    previous = "bridge"
    for i in reversed(range(n)):
        op = "upconv" if body.up == "conv" else "upsample"
        label = "trilinear" if i < halve else "bilinear"
        label += (" + 3x3x3 conv" if i < halve else " + 3x3 conv") * (op == "upconv")
        nodes.append(ResampleNode(
            name=f"up.{i}", inputs=(previous,), out_channels=up_ch[i], scale=2**i,
            label=label, path="mixed_unetr.up", meta={"level": i}, op=op, steps=1,
            in_channels=up_ch[i], in_scale=2 ** (i + 1), padding=unit["padding"].value,
            temporal=i < halve, time_scale=frames(i),
        ))  # fmt: skip
        skip = f"skips.{i}" if body.skip_units else f"encoder.{i}"
        if body.gate and i > 0:
            nodes.append(GateNode(
                name=f"gates.{i}", inputs=(f"up.{i}", skip), out_channels=ch[i],
                scale=2**i, label="attention gate", path="mixed_unetr.gate",
                meta={"level": i}, gate_channels=up_ch[i], time_scale=frames(i),
            ))  # fmt: skip
            skip = f"gates.{i}"
        nodes.append(MergeNode(
            name=f"cat:decoder.{i}", inputs=(skip, f"up.{i}"), out_channels=ch[i] + up_ch[i],
            scale=2**i, label="concat", meta={"level": i}, op="cat", time_scale=frames(i),
        ))  # fmt: skip
        if body.decoder_blocks:
            block = stages[f"decoder.{i}"].node(source, [f"cat:decoder.{i}"])
            nodes.append(replace(block, time_scale=frames(i)))
        else:
            nodes.append(conv_unit(f"decoder.{i}", f"decoder level {i}", (f"cat:decoder.{i}",),
                                   ch[i] + up_ch[i], dec_ch[i], i, False))  # fmt: skip
        previous = f"decoder.{i}"
    features = tuple(Feature(f"decoder.{i}", dec_ch[i], 2**i) for i in range(n))
    rows = []
    for i in range(n):
        row = [f"encoder.{i}", *([f"skips.{i}"] if body.skip_units else []),
               *([f"gates.{i}"] if body.gate and i > 0 else []), f"cat:decoder.{i}",
               f"decoder.{i}"]  # fmt: skip
        rows.append(tuple(row))
    layout = Layout(
        rankdir="TB",
        rows=tuple(rows),
        back=frozenset(f"up.{i}" for i in range(n)),
        as_edges=frozenset(f"down.{i}" for i in range(n)),
    )
    return ModelGraph(source, tuple(nodes), "decoder.0", features, source.spec.in_channels,
                      dec_ch[0], layout)  # fmt: skip
