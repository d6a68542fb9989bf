"""ST-CNNT HR-Net: parallel resolution levels that exchange information every stage.

Block (i, j) runs at level i (H/2^i, channels[i]) in stage j; level i joins at stage i.
The input of block (i, j) is the sum of the earlier outputs of its own level and of the
previous stage's finer levels brought down to level i:

    in(i, j) = sum_{k<j} x(i, k) + sum_{a<i} down_{a->i}(x(a, j-1))

(the reference implementation's wiring). The fusion stage brings every level to every
level (down: patch merging; up: bilinear + 3x3 conv), sums, and runs an output block per
level. `forward` returns the per-level outputs brought to full resolution and
concatenated; the features are the per-level outputs.

Names: `level{i}.stage{j}`, `level{i}.output`, `exchange.stage{j}.{a}to{i}`,
`fuse.{a}to{k}`, `upsample.{k}`, `sum:<consumer>`, `cat:output`.
"""

from __future__ import annotations

from ...language.spec import HRNetSpec, SpecSource
from ..model import Feature, Layout, ModelGraph
from ..nodes import MergeNode, Node, ResampleNode
from .common import (
    Entry,
    Stage,
    apply_overrides,
    block_path,
    broadcast,
    check_cell_count,
    stage_layers,
)

__all__ = ["build_hrnet"]


def _stages(source: SpecSource, body: HRNetSpec, entry: Entry) -> list[Stage]:
    n, s = body.num_levels, body.num_stages
    ch = broadcast(body.channels, n)
    blocks = broadcast(body.blocks, n)
    branches = body.branches or [None] * n

    def stage(name, label, i, cin, meta) -> Stage:
        entry, path = branches[i], f"hrnet.branches[{i}]"
        block = entry.blocks if entry is not None and entry.blocks is not None else blocks[i]
        return Stage(
            name=name, label=label, path=path, block=block,
            block_path=block_path("hrnet", body.blocks, i, entry, path),
            in_channels=cin, out_channels=ch[i], scale=2**i,
            layers=stage_layers(source, entry, path, 2**i), meta=meta,
        )  # fmt: skip

    stages = [
        stage(f"level{i}.stage{j}", f"level {i}, stage {j}", i,
              entry.channels if (i, j) == (0, 0) else ch[i], {"level": i, "stage": j})
        for j in range(s)
        for i in range(min(j, n - 1) + 1)
    ]  # fmt: skip
    stages += [
        stage(f"level{i}.output", f"level {i}, output block", i, ch[i], {"level": i})
        for i in range(n)
    ]
    return apply_overrides(source, stages)


def build_hrnet(source: SpecSource, entry: Entry) -> ModelGraph:
    body: HRNetSpec = source.spec.hrnet
    n, s = body.num_levels, body.num_stages
    ch = broadcast(body.channels, n)
    stages = {st.name: st for st in _stages(source, body, entry)}
    if body.resample == "block":  # a block per exchange and fusion path
        exchanges = sum(min(j, n - 1) * (min(j, n - 1) + 1) // 2 for j in range(1, s))
        per_block = max(len(stages[f"level{i}.output"].block.cells) for i in range(n))
        cells = sum(len(st.block.cells) for st in stages.values())
        check_cell_count(cells + (exchanges + n * (n - 1)) * per_block, source)
    nodes: list[Node] = []
    edges: set[str] = set()

    def resample(name: str, a: int, b: int, source_name: str, **meta) -> str:
        """A node bringing level a's `source_name` to level b (owned by level b's
        output block, whose options it takes)."""
        target = stages[f"level{b}.output"]
        common = dict(
            name=name, inputs=(source_name,), out_channels=ch[b], scale=2**b,
            path="hrnet.resample", meta={"from": a, "to": b, **meta},
            steps=abs(b - a), in_channels=ch[a], in_scale=2**a,
        )  # fmt: skip
        if body.resample == "block":
            plan = target.plan(source, ch[a], ch[b], where=name)
            node = ResampleNode(**common, label=f"{'down' if b > a else 'up'} x{2 ** abs(b - a)}"
                                " (block)", op="block", plan=plan)  # fmt: skip
        elif b > a:
            node = ResampleNode(**common, label=f"down x{2 ** (b - a)}", op="merge")
        else:
            node = ResampleNode(**common, label=f"up x{2 ** (a - b)}", op="upconv",
                                padding=target.option(source, "padding"))  # fmt: skip
        nodes.append(node)
        edges.add(name)
        return name

    def summed(target: str, terms: list[str], scale: int, channels: int, **meta) -> str:
        if len(terms) == 1:
            return terms[0]
        name = f"sum:{target}"
        nodes.append(MergeNode(name=name, inputs=tuple(terms), out_channels=channels,
                               scale=scale, label="+", meta=meta, op="sum"))  # fmt: skip
        return name

    outs: list[list[str]] = [[] for _ in range(n)]  # outs[i]: level i's outputs so far
    for j in range(s):
        new = []
        for i in range(min(j, n - 1) + 1):
            name = f"level{i}.stage{j}"
            if j == 0:
                inputs = [entry.name]
            else:
                terms = list(outs[i])
                terms += [
                    resample(f"exchange.stage{j}.{a}to{i}", a, i, outs[a][-1], stage=j)
                    for a in range(i)
                    if outs[a]
                ]
                inputs = [summed(name, terms, 2**i, ch[i], level=i, stage=j)]
            nodes.append(stages[name].node(source, inputs))
            new.append((i, name))
        for i, name in new:
            outs[i].append(name)
    last = [level[-1] for level in outs]
    fused = []
    for k in range(n):
        terms = [last[i] if i == k else resample(f"fuse.{i}to{k}", i, k, last[i]) for i in range(n)]
        name = f"level{k}.output"
        nodes.append(stages[name].node(source, [summed(name, terms, 2**k, ch[k], level=k)]))
        fused.append(name)
    full = [fused[0]]
    for k in range(1, n):
        name = f"upsample.{k}"
        nodes.append(ResampleNode(
            name=name, inputs=(fused[k],), out_channels=ch[k], scale=1,
            label=f"up x{2**k}", path="hrnet", meta={"from": k, "to": 0}, op="upconv",
            steps=k, in_channels=ch[k], in_scale=2**k,
            padding=stages[fused[k]].option(source, "padding"),
        ))  # fmt: skip
        full.append(name)
    nodes.append(MergeNode(name="cat:output", inputs=tuple(full), out_channels=sum(ch),
                           scale=1, label="concat", op="cat"))  # fmt: skip
    features = tuple(Feature(f"level{k}.output", ch[k], 2**k) for k in range(n))
    columns = [tuple(f"level{i}.stage{j}" for i in range(min(j, n - 1) + 1)) for j in range(s)]
    layout = Layout(
        rankdir="LR",
        rows=(*columns, tuple(fused)),
        as_edges=frozenset(edges) | frozenset(f"upsample.{k}" for k in range(1, n)),
    )
    return ModelGraph(source, tuple(nodes), "cat:output", features, source.spec.in_channels,
                      sum(ch), layout)  # fmt: skip
