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


# 1024-token windows and one 128-feature head: neither the short kernel nor the rule's
# threshold decides here, only the tuning's SDPA threshold
LONG_WINDOWS = "unet(channels=[128], blocks=L0, window=32, patch=1, rel_pos_bias=false, heads=1)"


def test_the_tuned_attention_kernel_moves_the_prediction_as_it_moves_the_step(
    monkeypatch, tmp_path
):
    """`STCNNT_TUNING=attention=matmul` keeps CPU attention off fused SDPA: the explicit
    kernel holds the S x S scores (and fused SDPA its own output and gradient copy). The
    CPU prediction reads the same tuning (`planner.memory.attention_threshold`), so its
    step grows by what the allocator's record of a real step grows by."""
    from stcnnt_dsl.nn import tuning
    from stcnnt_dsl.planner.memory import attention_threshold

    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path))  # no tuning measured here
    shape = (1, 4, 1, 64, 64)
    graph = build_graph(LONG_WINDOWS)
    steps = {}
    for value in ("sdpa", "matmul"):
        monkeypatch.setenv(tuning.ENV_TUNING, f"attention={value}")
        tuning.reset()
        torch.manual_seed(0)
        measured = allocated_peak(build(LONG_WINDOWS, seed=0), torch.randn(shape))
        steps[value] = step_memory(graph, shape, "cpu").step_bytes, measured
    tuning.reset()
    assert attention_threshold("cuda") == 0  # CUDA: SDPA at every length
    (sdpa, sdpa_measured), (matmul, matmul_measured) = steps["sdpa"], steps["matmul"]
    grown, measured_growth = matmul - sdpa, matmul_measured - sdpa_measured
    assert measured_growth > 2**20, steps  # the scores: a real difference to follow
    assert abs(grown - measured_growth) <= 0.15 * measured_growth, steps
    for predicted, measured in steps.values():  # an upper bound (the decoder's input
        assert measured <= predicted <= 1.25 * measured, steps  # gradients, counted twice)
