"""Performance contracts that are not timings.

- `torch.compile` traces every bundled architecture in one graph (no graph breaks) and
  gives eager's output; `torch.export` works for a fixed shape;
- activation checkpointing (per stage or everywhere) gives the same gradients and less
  training memory;
- forward memory grows linearly with H*W (no S x S matrices for long sequences);
- the fast paths (fused CPU inference, the one-copy q/k/v gather, the instance norm
  Function, chunked long sequences) compute what the plain ops compute.
Timings live in `tools/bench.py` (see docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import stcnnt_dsl
from stcnnt_dsl.nn import Block, activations
from stcnnt_dsl.nn import attention as nn_attention
from stcnnt_dsl.nn import cells as nn_cells
from stcnnt_dsl.nn import functional as nnf
from stcnnt_dsl.nn.norms import instance_norm
from stcnnt_dsl.registry import BUILTIN_ACTIVATIONS

ARCHS = stcnnt_dsl.list_architectures()
TINY = {
    "name": "tiny-llm",
    "in_channels": 1,
    "defaults": {"window": 4, "patch": 2, "grid": 2, "norm": "instance2d"},
    "llm": {"channels": 8, "blocks": ["T1L1G1"], "dense_skips": True},
}


def _model(arch: Any, **options: Any) -> stcnnt_dsl.models.Backbone:
    spec = stcnnt_dsl.load_spec(arch).model_dump(exclude_none=True, round_trip=True)
    spec.setdefault("defaults", {}).update(options)
    return stcnnt_dsl.build(spec, seed=0)


def _input(model, t: int = 2, size: int = 32) -> torch.Tensor:
    h, w = model.spec.input_size or (size, size)
    return torch.randn(1, t, model.in_channels, h, w, generator=torch.Generator().manual_seed(0))


def _peak_bytes(fn) -> int:
    """High-water mark of torch's CPU tensor allocations during fn(), above the start."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for _, _, nbytes in sorted((e.start_ns(), i, e.nbytes()) for i, e in enumerate(events)):
        level += nbytes
        peak = max(peak, level)
    return peak


# ------------------------------------------------------------------ compile and export


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamo_traces_each_bundled_architecture_in_one_graph(arch):
    model = _model(arch).eval()
    explanation = torch._dynamo.explain(model)(_input(model))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_dynamo_traces_training_with_checkpointing_in_one_graph():
    model = _model("unet", checkpoint=True).train()
    explanation = torch._dynamo.explain(model)(_input(model))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons


def _check_compiled_matches_eager(model, x: torch.Tensor, backend: str = "inductor") -> None:
    model.eval()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        want, got = model(x), compiled(x)
    torch._dynamo.reset()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["unet", "llm"])
def test_traced_graph_matches_eager(arch):
    """Dynamo + AOTAutograd (no code generation): the captured graph computes eager's
    output (eager uses the fused CPU inference path, the graph plain ops)."""
    model = _model(arch)
    _check_compiled_matches_eager(model, _input(model), backend="aot_eager")


def test_inductor_output_matches_eager():
    model = stcnnt_dsl.build(TINY, seed=0)
    _check_compiled_matches_eager(model, torch.randn(1, 2, 1, 16, 16))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "hrnet", "llm"])
def test_inductor_output_matches_eager_for_bundled_architectures(arch):
    model = _model(arch)
    _check_compiled_matches_eager(model, _input(model))


@pytest.mark.parametrize("arch", ["unet", "hrnet", "llm"])
def test_export_for_a_fixed_shape(arch):
    model = _model(arch).eval()
    x = _input(model)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ checkpointing


def _grads(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_every_block_gives_the_same_gradients():
    plain, ckpt = _model("unet"), _model("unet", checkpoint=True)
    assert all(m.use_checkpoint for m in ckpt.modules() if isinstance(m, Block))
    x = _input(plain)
    want, got = _grads(plain, x), _grads(ckpt, x)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_set_per_stage():
    spec = stcnnt_dsl.load_spec("unet").model_dump(exclude_none=True, round_trip=True)
    spec["unet"]["encoder"] = [{"checkpoint": True}, {}, {}]
    model = stcnnt_dsl.build(spec, seed=0)
    assert [b.use_checkpoint for b in model.encoder] == [True, False, False]
    assert [b.use_checkpoint for b in model.decoder] == [True, False, False]  # follows
    assert not model.bridge.use_checkpoint
    x = _input(model)
    got, want = _grads(model, x), _grads(_model("unet"), x)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_cuts_training_peak_memory():
    # Large enough that activations, not the weights and their gradients, set the peak
    # (measured 0.48x at this size; at 64x64 the 2 x 59 MB of weights and gradients
    # dominate and checkpointing saves 16%).
    x = torch.randn(1, 2, 1, 128, 128)
    peaks = {}
    for ckpt in (False, True):
        model = _model("unet", checkpoint=ckpt).train()
        peaks[ckpt] = _peak_bytes(lambda m=model: m(x).square().mean().backward())
    assert peaks[True] <= 0.8 * peaks[False], peaks


# ---------------------------------------------------------------------- memory scaling


@pytest.mark.parametrize("arch", ["unet", "hrnet", "llm"])
def test_forward_memory_grows_linearly_with_the_image(arch):
    model = _model(arch).eval()
    with torch.no_grad():
        small = _peak_bytes(lambda: model(torch.randn(1, 2, 1, 64, 64)))
        large = _peak_bytes(lambda: model(torch.randn(1, 2, 1, 128, 128)))
    assert large <= 4.4 * small, (small, large)


@pytest.mark.parametrize("rel_pos_bias", [False, True, "after_softmax"])
def test_long_global_sequences_never_hold_an_s_by_s_matrix(rel_pos_bias):
    """G with a pixel window: the sequence (windows per frame) grows with H*W; 1024 and
    4096 tokens here. Memory must grow like the image (4x), not like S^2 (16x)."""
    block = Block("G1", 8, 8, window=2, patch=1, rel_pos_bias=rel_pos_bias).eval()
    with torch.no_grad():
        small = _peak_bytes(lambda: block(torch.randn(1, 1, 8, 64, 64)))
        large = _peak_bytes(lambda: block(torch.randn(1, 1, 8, 128, 128)))
    assert large <= 4.4 * small, (small, large)


@pytest.mark.parametrize("bias", [True, "after_softmax"])
@pytest.mark.parametrize(("kind", "options"), [("G1", {"window": 2, "patch": 1}),
                                               ("V1", {"window": 2})])  # fmt: skip
def test_chunked_long_sequences_match_one_pass(kind, options, bias, monkeypatch):
    block = Block(kind, 4, 4, rel_pos_bias=bias, **options).double()
    with torch.no_grad():
        block.cells[0].attn.bias_table.normal_(0, 0.5)
    x = torch.randn(1, 2, 4, 48, 40, dtype=torch.double, requires_grad=True)  # 480 tokens
    chunked = block(x)
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    monkeypatch.setattr(nn_attention, "LONG_SEQUENCE_CHUNK", 10**9)
    whole = block(x)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), x)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("arch", ["unet", "unet-3d-small", "reference-unet"])
def test_fused_cpu_inference_matches_plain_ops(arch, monkeypatch):
    """reference-unet: reflect padding (padded first) and PReLU (oneDNN's leaky ReLU
    with the learned slope) take the fused path too."""
    model = _model(arch).eval()
    if arch == "reference-unet":
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                torch.nn.init.constant_(m.weight, 0.3)
    x = _input(model)
    fused_calls = []
    real = nnf.fused_conv2d

    def spy(*args, **kwargs):
        fused_calls.append(kwargs.get("unary"))
        return real(*args, **kwargs)

    for module in (nn_attention, nn_cells):
        monkeypatch.setattr(module, "fused_conv2d", spy)
    with torch.no_grad():
        fused = model(x)
        assert fused_calls
        if arch == "reference-unet":
            assert ("leaky_relu", [pytest.approx(0.3)], None) in fused_calls
        monkeypatch.setattr(nnf, "FUSED_CPU_INFERENCE", False)
        plain = model(x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


def test_fused_path_is_not_taken_when_gradients_are_needed():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    assert not nnf.can_fuse(conv, x)  # parameters require grad, grad mode is on
    with torch.no_grad():
        assert nnf.can_fuse(conv, x) == nnf._onednn_fusion_works()


@pytest.mark.parametrize(
    ("window", "patch", "channels", "heads"),
    [
        ((4, 4), (2, 2), 8, 4),
        ((4, 8), (2, 4), 6, 3),
        ((4, 4), (2, 2), 6, 4),
        ((4, 4), (1, 1), 8, 1),
    ],
)
@pytest.mark.parametrize("mode", ["local", "global"])
def test_qkv_gather_matches_partition_and_its_gradient(window, patch, channels, heads, mode):
    """partition_qkv (one copy, Function with its own backward) against the plain
    partition + head split; (6 channels, 4 heads) has heads across axes: fallback."""
    x = torch.randn(2, 3, channels, 8, 16, dtype=torch.double, requires_grad=True)
    got = nnf.partition_qkv(x, window, patch, mode, heads)
    want = nnf.partition(x, window, patch, mode).unflatten(-1, (heads, -1)).transpose(-3, -2)
    for g, w in zip(got, want.unbind(0), strict=True):
        torch.testing.assert_close(g, w)
    torch.autograd.gradcheck(
        lambda t: nnf.partition_qkv(t, window, patch, mode, heads), (x,), fast_mode=True
    )
    out = torch.randn(got[0].shape, dtype=torch.double)
    back = nnf.unpartition_heads(out, (8, 16), window, patch, mode)
    want_back = nnf.unpartition(out.transpose(1, 2).flatten(2), (8, 16), window, patch, mode)
    torch.testing.assert_close(back, want_back)


def test_frame_tokens_gradient():
    y = torch.randn(6, 12, 4, 5, dtype=torch.double, requires_grad=True)
    torch.autograd.gradcheck(lambda t: nnf.frame_tokens(t, 2, 3, 2), (y,), fast_mode=True)


@pytest.mark.parametrize("dims", [(-2, -1), (1, -2, -1)])
def test_instance_norm_function(dims):
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.double, requires_grad=True)
    var, mean = torch.var_mean(x, dims, keepdim=True, correction=0)
    torch.testing.assert_close(instance_norm(x, dims), (x - mean) / torch.sqrt(var + 1e-5))
    assert torch.autograd.gradcheck(lambda t: instance_norm(t, dims), (x,))
    assert torch.autograd.gradgradcheck(lambda t: instance_norm(t, dims), (x,))
    frames = torch.randn(6, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    out = instance_norm(frames.unflatten(0, (2, 3)), dims).flatten(0, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(BUILTIN_ACTIVATIONS))
def test_every_activation_has_one_module_and_its_fused_form_computes_it(name):
    """One table (`nn.activations`) makes each activation and names the oneDNN post-op
    that computes it inside a convolution: the fused result equals the plain ops."""
    assert set(activations.BUILTIN) == set(BUILTIN_ACTIVATIONS)
    act = activations.make_activation(name)
    unary = activations.onednn_unary(name)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = act(conv(x))
        if unary is None or not nnf.can_fuse(conv, x):
            assert unary is None or not nnf._onednn_fusion_works()
            return
        fused = nnf.fused_conv2d(conv, x, unary=unary)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
