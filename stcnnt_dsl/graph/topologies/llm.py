"""The LLM-style stack: blocks one after another at full resolution; with
`dense_skips`, block k takes the sum of the outputs of all earlier blocks (non-causal
attention throughout). Names: `blocks.k`, `sum:blocks.k`."""

from __future__ import annotations

from ...errors import SpecError
from ...language.spec import LLMSpec, SpecSource
from ..model import Feature, Layout, ModelGraph
from ..nodes import MergeNode, Node
from .common import Entry, Stage, apply_overrides, block_path, broadcast, stage_layers

__all__ = ["build_llm"]


def build_llm(source: SpecSource, entry: Entry) -> ModelGraph:
    spec = source.spec
    body: LLMSpec = spec.llm
    n = body.num_blocks
    ch = broadcast(body.channels, n)
    blocks = broadcast(body.blocks, n)
    entries = body.stages or [None] * n
    if body.dense_skips and len(set(ch)) > 1:
        raise SpecError(
            "dense_skips sums the outputs of earlier blocks, so every block needs the same "
            f"channels (got {ch}); use one channel count or set dense_skips: false",
            "llm.channels",
        )
    stages = apply_overrides(source, [
        Stage(
            name=f"blocks.{k}", label=f"block {k}", path=f"llm.stages[{k}]",
            block=entries[k].blocks if entries[k] is not None and entries[k].blocks is not None
            else blocks[k],
            block_path=block_path("llm", body.blocks, k, entries[k], f"llm.stages[{k}]"),
            in_channels=entry.channels if k == 0 else ch[k - 1], out_channels=ch[k],
            scale=1, layers=stage_layers(source, entries[k], f"llm.stages[{k}]", 1),
            meta={"index": k},
        )
        for k in range(n)
    ])  # fmt: skip
    nodes: list[Node] = []
    for k, stage in enumerate(stages):
        if k == 0:
            inputs = [entry.name]
        elif body.dense_skips and k >= 2:
            name = f"sum:{stage.name}"
            nodes.append(MergeNode(
                name=name, inputs=tuple(s.name for s in stages[:k]), out_channels=ch[k - 1],
                scale=1, label="+", meta={"index": k}, op="sum",
            ))  # fmt: skip
            inputs = [name]
        else:
            inputs = [stages[k - 1].name]
        nodes.append(stage.node(source, inputs))
    features = tuple(Feature(s.name, s.out_channels, 1) for s in stages)
    return ModelGraph(source, tuple(nodes), stages[-1].name, features, spec.in_channels,
                      ch[-1], Layout(rankdir="TB"))  # fmt: skip
