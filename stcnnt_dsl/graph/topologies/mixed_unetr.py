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

With `partition: 2d | 3d` (the reference's window partition), an input stage
`partition` (space-to-depth, then a conv to channels[0]; 3d halves T as well) feeds the
levels, which then all run at half the size; its skip (`partition_skip`, a residual unit
with `skip_units`) and `decoder.0`'s 3C channels meet in `partition_decoder` (4C; the
reference's order: decoder first), `partition_up` brings it to full size, and with
`input_unit` a unit on the input (C channels) is concatenated in front: 5C out.

Names: `encoder.i`, `skips.i`, `down.i`, `bridge`, `up.i`, `gates.i`, `cat:decoder.i`,
`decoder.i`; with a partition `partition`, `partition_skip`, `input_unit`,
`cat:partition_decoder`, `partition_decoder`, `partition_up`, `cat:output`.
"""

from __future__ import annotations

from dataclasses import replace

from ...language.cascade import resolve_options
from ...language.spec import MixedUNetrSpec, SpecSource
from ..model import Feature, Layout, ModelGraph
from ..nodes import ConvUnitNode, GateNode, MergeNode, Node, PartitionNode, ResampleNode
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
    shift = body.partition != "none"  # the levels run at half size after a partition

    def stage(name, label, spec, path, index, cin, cout, level) -> Stage:
        block = spec.blocks if spec is not None and spec.blocks is not None else blocks[index]
        scale = 2 ** (level + shift)
        return Stage(
            name=name, label=label, path=path, block=block,
            block_path=block_path("mixed_unetr", body.blocks, index, spec, path),
            in_channels=cin, out_channels=cout, scale=scale,
            layers=stage_layers(source, spec, path, scale), meta={"level": index},
        )  # fmt: skip

    first = ch[0] if shift else entry.channels
    stages = [
        stage(f"encoder.{i}", f"encoder level {i}", enc[i], f"mixed_unetr.encoder[{i}]", i,
              first if i == 0 else ch[i - 1], ch[i], i)
        for i in range(n)
    ]  # fmt: skip
    stages.append(stage("bridge", "bridge", body.bridge, "mixed_unetr.bridge", n, ch[-1],
                        ch[-1], n))  # fmt: skip
    if body.decoder_blocks:
        up, out = decoder_channels(ch)
        dec, key = (body.decoder, "decoder") if body.decoder else (enc, "encoder")
        stages += [
            stage(f"decoder.{i}", f"decoder level {i}", dec[i], f"mixed_unetr.{key}[{i}]", i,
                  ch[i] + up[i], out[i], i)
            for i in reversed(range(n))
        ]  # fmt: skip
        if shift:  # sized as decoder.0 (the reference's UW)
            path = f"mixed_unetr.{key}[0]"
            stages.append(stage("partition_decoder", "partition decoder", dec[0], path, 0,
                                out[0] + ch[0], 4 * ch[0], 0))  # fmt: skip
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
    shift = body.partition != "none"
    t_part = 2 if body.partition == "3d" else 1

    # levels: 0..n-1, the bridge n; with a partition, -1 its stage (level 0's size) and
    # -2 the full-size input
    def frames(level: int) -> int:
        """1/scale of T at `level`."""
        return 1 if level == -2 else t_part * 2 ** min(max(level, 0), halve)

    def scale_of(level: int) -> int:
        return 1 if level == -2 else 2 ** (max(level, 0) + shift)

    def conv_unit(name, label, inputs, cin, cout, level, residual) -> ConvUnitNode:
        scale = scale_of(level)
        return ConvUnitNode(
            name=name, inputs=inputs, out_channels=cout, scale=scale, label=label,
            path="mixed_unetr", meta={"level": level}, in_channels=cin, residual=residual,
            temporal=body.conv == "3d", norm=unit["norm"].value,
            activation=unit["activation"].value, padding=unit["padding"].value,
            input_size=None if size is None else (size[0] // scale, size[1] // scale),
            time_scale=frames(level),
        )  # fmt: skip

    def up_node(name, inputs, channels, level, temporal) -> ResampleNode:
        op = "upconv" if body.up == "conv" else "upsample"
        label = "trilinear" if temporal else "bilinear"
        label += (" + 3x3x3 conv" if temporal else " + 3x3 conv") * (op == "upconv")
        return ResampleNode(
            name=name, inputs=inputs, out_channels=channels, scale=scale_of(level),
            label=label, path="mixed_unetr.up", meta={"level": level}, op=op, steps=1,
            in_channels=channels, in_scale=scale_of(level + 1),
            padding=unit["padding"].value, temporal=temporal, time_scale=frames(level),
        )  # fmt: skip

    def decoder(name, label, inputs, cin, cout, level) -> Node:
        if body.decoder_blocks:
            block = stages[name].node(source, inputs)
            return replace(block, time_scale=frames(level))
        return conv_unit(name, label, inputs, cin, cout, level, False)

    nodes: list[Node] = []
    previous = entry.name
    if shift:
        nodes.append(PartitionNode(
            name="partition", inputs=(entry.name,), out_channels=ch[0], scale=2,
            label=f"{body.partition} window partition", path="mixed_unetr.partition",
            meta={"level": -1}, steps=1, in_channels=entry.channels, in_scale=1,
            padding=unit["padding"].value, temporal=body.partition == "3d",
            time_scale=t_part, conv_temporal=body.conv == "3d", order=body.partition_order,
        ))  # fmt: skip
        if body.skip_units:
            nodes.append(conv_unit("partition_skip", "skip unit", ("partition",), ch[0],
                                   ch[0], -1, True))  # fmt: skip
        if body.input_unit:
            nodes.append(conv_unit("input_unit", "input unit", (entry.name,), entry.channels,
                                   ch[0], -2, True))  # fmt: skip
        previous = "partition"
    for i in range(n):
        enc = stages[f"encoder.{i}"]
        nodes.append(replace(enc.node(source, [previous]), time_scale=frames(i)))
        if body.skip_units:
            nodes.append(conv_unit(f"skips.{i}", "skip unit", (enc.name,), ch[i], ch[i], i, True))
        nodes.append(ResampleNode(
            name=f"down.{i}", inputs=(enc.name,), out_channels=ch[i], scale=scale_of(i + 1),
            label="patch merge" + " (T too)" * (i < halve), path="mixed_unetr",
            meta={"level": i}, op="merge", steps=1, in_channels=ch[i], in_scale=scale_of(i),
            temporal=i < halve, time_scale=frames(i + 1),
        ))  # fmt: skip
        previous = f"down.{i}"
    nodes.append(replace(stages["bridge"].node(source, [previous]), time_scale=frames(n)))
    previous = "bridge"
    for i in reversed(range(n)):
        nodes.append(up_node(f"up.{i}", (previous,), up_ch[i], i, i < halve))
        skip = f"skips.{i}" if body.skip_units else f"encoder.{i}"
        if body.gate and i > 0:
            nodes.append(GateNode(
                name=f"gates.{i}", inputs=(f"up.{i}", skip), out_channels=ch[i],
                scale=scale_of(i), label="attention gate", path="mixed_unetr.gate",
                meta={"level": i}, gate_channels=up_ch[i], time_scale=frames(i),
            ))  # fmt: skip
            skip = f"gates.{i}"
        nodes.append(MergeNode(
            name=f"cat:decoder.{i}", inputs=(skip, f"up.{i}"), out_channels=ch[i] + up_ch[i],
            scale=scale_of(i), label="concat", meta={"level": i}, op="cat",
            time_scale=frames(i),
        ))  # fmt: skip
        nodes.append(decoder(f"decoder.{i}", f"decoder level {i}", (f"cat:decoder.{i}",),
                             ch[i] + up_ch[i], dec_ch[i], i))  # fmt: skip
        previous = f"decoder.{i}"
    output, out_ch = "decoder.0", dec_ch[0]
    features = [Feature(f"decoder.{i}", dec_ch[i], scale_of(i)) for i in range(n)]
    if shift:
        # the partition's skip is never gated: decoder.0's 3C channels differ from its C
        skip = "partition_skip" if body.skip_units else "partition"
        out_ch = 4 * ch[0]
        nodes.append(MergeNode(
            name="cat:partition_decoder", inputs=("decoder.0", skip), scale=2,
            out_channels=dec_ch[0] + ch[0], label="concat", meta={"level": -1}, op="cat",
            time_scale=t_part,
        ))  # fmt: skip
        cin = dec_ch[0] + ch[0]
        nodes.append(decoder("partition_decoder", "partition decoder",
                             ("cat:partition_decoder",), cin, out_ch, -1))  # fmt: skip
        nodes.append(up_node("partition_up", ("partition_decoder",), out_ch, -2,
                             body.partition == "3d"))  # fmt: skip
        output = "partition_up"
        features.insert(0, Feature("partition_up", out_ch, 1))
        if body.input_unit:
            nodes.append(MergeNode(
                name="cat:output", inputs=("input_unit", "partition_up"), scale=1,
                out_channels=ch[0] + out_ch, label="concat", meta={"level": -2}, op="cat",
            ))  # fmt: skip
            output, out_ch = "cat:output", ch[0] + out_ch
    rows = []
    if shift:
        rows.append(("partition", *(["partition_skip"] if body.skip_units else []),
                     "cat:partition_decoder", "partition_decoder"))  # fmt: skip
    for i in range(n):
        row = [f"encoder.{i}", *([f"skips.{i}"] if body.skip_units else []),
               *([f"gates.{i}"] if body.gate and i > 0 else []), f"cat:decoder.{i}",
               f"decoder.{i}"]  # fmt: skip
        rows.append(tuple(row))
    layout = Layout(
        rankdir="TB",
        rows=tuple(rows),
        back=frozenset([f"up.{i}" for i in range(n)] + ["partition_up"] * shift),
        as_edges=frozenset(f"down.{i}" for i in range(n)),
    )
    return ModelGraph(source, tuple(nodes), output, tuple(features), source.spec.in_channels,
                      out_ch, layout)  # fmt: skip
