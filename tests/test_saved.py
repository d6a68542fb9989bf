"""The graph's memory facts against independent references: the elements it says
autograd saves (`ModelGraph.saved`, per cell kind and per node) against autograd's own
saved-tensor hooks on a real training forward, and the training step's predicted peak
(`planner.step_memory`) against the allocator's record of one step (torch's profiler)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from stcnnt_dsl import build
from stcnnt_dsl.graph.build import build_graph
from stcnnt_dsl.nn import Block
from stcnnt_dsl.planner.memory import step_memory
from stcnnt_dsl.registry import CELLS, KIND_TO_LETTER, has_mixer_digit

SHAPE = (1, 4, 32, 32)  # B, T, H, W


def hooked_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one training forward of `model` (each
    storage once; parameters and buffers are not activations)."""
    weights = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            seen.setdefault(storage._cdata, storage)  # kept alive: ids stay unique
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(s.nbytes() for s in seen.values())


def _texts(kind: str) -> list[str]:
    letter = KIND_TO_LETTER[kind]
    return [f"{letter}1", f"{letter}0"] if has_mixer_digit(kind) else [letter]


CELL_CASES = [
    (text, cin, cout, norm)
    for kind in CELLS
    for text in _texts(kind)
    for cin, cout, norm in ((16, 16, "instance2d"), (8, 16, "batch2d"))
]


@pytest.mark.parametrize(("text", "cin", "cout", "norm"), CELL_CASES)
def test_saved_elements_of_every_cell_kind_match_autograd(text, cin, cout, norm):
    options = {"norm": norm}
    if text[0] in "LGV":
        options["window"] = 8
    if text[0] in "LG":
        options["patch"] = 2
    block = Block(text, cin, cout, **options)
    b, t, h, w = SHAPE
    x = torch.randn(b, t, cin, h, w)
    predicted = 4 * sum(block.plan.saved(b * t, t, h, w).values())
    measured = hooked_bytes(block, x)
    assert abs(predicted - measured) <= 0.03 * measured, (predicted, measured)


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("unet-2d-small", (1, 2, 1, 32, 32)),
        ("unet-3d-small", (1, 4, 1, 32, 32)),
        ("hrnet", (1, 1, 1, 32, 32)),
        ("reference-mixed-unetr", (1, 2, 1, 32, 32)),
    ],
)
def test_saved_elements_of_topologies_match_autograd(arch, shape):
    """U-Net (merges, upconvs, gates, cat), HRNet (exchanges, fuses, upsampling) and
    the mixed U-Netr (conv units, bilinear), whole models."""
    graph = build_graph(arch)
    predicted = 4 * sum(graph.saved(shape).values())
    measured = hooked_bytes(build(arch, seed=0), torch.randn(shape))
    assert abs(predicted - measured) <= 0.05 * measured, (predicted, measured)


def allocated_peak(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The highest bytes torch's allocator held above the start of one AdamW step
    (forward, loss, backward, update), from the profiler's allocation records."""

    def step(optimizer: torch.optim.Optimizer) -> None:
        out = model(x)
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step(torch.optim.AdamW(model.parameters(), lr=1e-4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(optimizer)
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "shape"),
    [("unet-2d-small", (1, 4, 1, 64, 64)), ("unet-3d-small", (1, 4, 1, 32, 32))],
)
def test_predicted_step_peak_matches_the_allocator(arch, shape):
    """The walk of saved elements, working memory and gradients against every
    allocation and free of a real step (C3 cells' unfolded columns included)."""
    torch.manual_seed(0)
    measured = allocated_peak(build(arch, seed=0), torch.randn(shape))
    predicted = step_memory(build_graph(arch), shape, "cpu").step_bytes
    assert abs(predicted - measured) <= 0.05 * measured, (predicted, measured)
