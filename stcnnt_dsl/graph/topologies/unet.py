"""ST-CNNT U-Net: encoder levels, a bridge, and decoder levels with gated skips.

Level i runs at H/2^i with channels[i]: encoder block i, 2x down-sampling, ..., the
bridge at H/2^L, then per level (coarsest first): 2x up-sampling, the attention gate on
the encoder skip, concatenation [gated skip, up-sampled], decoder block i. The output
has channels[0] channels at full resolution; the features are the decoder outputs,
finest first.

Names: `encoder.i`, `down.i`, `bridge`, `up.i`, `gates.i`, `cat:decoder.i`, `decoder.i`.
A topology whose spec model extends `UNetSpec` may build its U-Net with `build_unet`:
spec paths start with its own key.
"""

from __future__ import annotations

from ...language.spec import SpecSource, UNetSpec
from ..model import Feature, Layout, ModelGraph
from ..nodes import GateNode, MergeNode, Node, ResampleNode
from .common import Entry, Stage, apply_overrides, block_path, broadcast, stage_layers

__all__ = ["build_unet"]


def _stages(source: SpecSource, body: UNetSpec, entry: Entry) -> list[Stage]:
    key = source.spec.topology
    n = body.num_levels
    ch = broadcast(body.channels, n)
    blocks = broadcast(body.blocks, n + 1)
    if len(blocks) == n:  # one per level: the bridge uses the last
        blocks.append(blocks[-1])
    enc = body.encoder or [None] * n
    # decoder levels default to their encoder's entries
    dec, dec_key = (body.decoder, "decoder") if body.decoder else (enc, "encoder")

    def stage(name, label, entry, path, index, cin, cout, scale, level) -> Stage:
        block = entry.blocks if entry is not None and entry.blocks is not None else blocks[index]
        return Stage(
            name=name, label=label, path=path, block=block,
            block_path=block_path(key, body.blocks, index, entry, path),
            in_channels=cin, out_channels=cout, scale=scale,
            layers=stage_layers(source, entry, path, scale), meta={"level": level},
        )  # fmt: skip

    stages = [
        stage(f"encoder.{i}", f"encoder level {i}", enc[i], f"{key}.encoder[{i}]", i,
              entry.channels if i == 0 else ch[i - 1], ch[i], 2**i, i)
        for i in range(n)
    ]  # fmt: skip
    stages.append(stage("bridge", "bridge", body.bridge, f"{key}.bridge", n, ch[-1], ch[-1],
                        2**n, n))  # fmt: skip
    stages += [
        stage(f"decoder.{i}", f"decoder level {i}", dec[i], f"{key}.{dec_key}[{i}]", i,
              2 * ch[i], ch[i - 1] if i > 0 else ch[0], 2**i, i)
        for i in reversed(range(n))
    ]  # fmt: skip
    return apply_overrides(source, stages)


def build_unet(source: SpecSource, entry: Entry) -> ModelGraph:
    body: UNetSpec = source.spec.body
    key = source.spec.topology
    n = body.num_levels
    ch = broadcast(body.channels, n)
    stages = {s.name: s for s in _stages(source, body, entry)}
    nodes: list[Node] = []
    previous = entry.name
    for i in range(n):
        enc = stages[f"encoder.{i}"]
        nodes.append(enc.node(source, [previous]))
        op = "merge" if body.down == "merge" else "pool"
        nodes.append(ResampleNode(
            name=f"down.{i}", inputs=(enc.name,), out_channels=ch[i], scale=2 ** (i + 1),
            label="patch merge" if op == "merge" else "2x2 mean", path=f"{key}.down",
            meta={"level": i}, op=op, steps=1, in_channels=ch[i], in_scale=2**i,
        ))  # fmt: skip
        previous = f"down.{i}"
    nodes.append(stages["bridge"].node(source, [previous]))
    previous = "bridge"
    for i in reversed(range(n)):
        dec = stages[f"decoder.{i}"]
        op = "upconv" if body.up == "conv" else "upsample"
        nodes.append(ResampleNode(
            name=f"up.{i}", inputs=(previous,), out_channels=ch[i], scale=2**i,
            label="bilinear + 3x3 conv" if op == "upconv" else "bilinear", path=f"{key}.up",
            meta={"level": i}, op=op, steps=1, in_channels=ch[i], in_scale=2 ** (i + 1),
            padding=dec.option(source, "padding"),
        ))  # fmt: skip
        skip = f"encoder.{i}"
        if body.gate:
            nodes.append(GateNode(
                name=f"gates.{i}", inputs=(f"up.{i}", skip), out_channels=ch[i],
                scale=2**i, label="attention gate", path=f"{key}.gate", meta={"level": i},
                gate_channels=ch[i],
            ))  # fmt: skip
            skip = f"gates.{i}"
        nodes.append(MergeNode(
            name=f"cat:decoder.{i}", inputs=(skip, f"up.{i}"), out_channels=2 * ch[i],
            scale=2**i, label="concat", meta={"level": i}, op="cat",
        ))  # fmt: skip
        nodes.append(dec.node(source, [f"cat:decoder.{i}"]))
        previous = dec.name
    features = tuple(
        Feature(f"decoder.{i}", stages[f"decoder.{i}"].out_channels, 2**i) for i in range(n)
    )
    rows = []
    for i in range(n):
        row = [f"encoder.{i}", *([f"gates.{i}"] if body.gate else []), f"cat:decoder.{i}",
               f"decoder.{i}"]  # fmt: skip
        rows.append(tuple(row))
    layout = Layout(
        rankdir="TB",
        rows=tuple(rows),
        back=frozenset(f"up.{i}" for i in range(n)),
        as_edges=frozenset(f"down.{i}" for i in range(n)),
    )
    return ModelGraph(source, tuple(nodes), "decoder.0", features, source.spec.in_channels,
                      stages["decoder.0"].out_channels, layout)  # fmt: skip
