"""Lean training (stcnnt_dsl.nn.lean): padded convolutions and mixers that save each
tensor once give exactly the plain ops' outputs and gradients, and keep less."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stcnnt_dsl
from stcnnt_dsl.nn import Block, lean
from stcnnt_dsl.nn.cells import Mixer


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while `fn()` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _grads(fn, inputs, params, grad):
    out = fn()
    return [out.detach(), *torch.autograd.grad(out, [*inputs, *params], grad)]


@pytest.mark.parametrize("padding", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_padded_conv_equals_the_module_and_saves_only_its_input(padding, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1, padding_mode=padding)
    x = torch.randn(2, 6, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(2, 5, 9, 7)
    params = list(conv.parameters())
    lean_out = _grads(lambda: lean.conv2d(conv, x), [x], params, grad)
    plain_out = _grads(lambda: conv(x), [x], params, grad)
    for got, want in zip(lean_out, plain_out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    saved = _saved_bytes(lambda: lean.conv2d(conv, x))
    params_bytes = sum(p.numel() * 4 for p in params)
    assert saved == x.numel() * 4 + params_bytes  # the input, once; no padded copy
    assert _saved_bytes(lambda: conv(x)) > saved


@pytest.mark.parametrize("activation", ["gelu", "prelu", "silu"])
@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_mixer_equals_plain_ops_and_keeps_only_input_and_hidden(activation, padding):
    torch.manual_seed(0)
    mixer = Mixer(4, 4, hidden=12, kernel=3, activation=activation, dropout=0.0, padding=padding)
    with torch.no_grad():
        for p in mixer[1].parameters():  # a PReLU slope that matters
            p.fill_(0.3)
    x = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    grad = torch.randn(2, 3, 4, 8, 8)
    params = list(mixer.parameters())
    lean_out = _grads(lambda: mixer(x), [x], params, grad)
    plain = nn.Sequential(*mixer)
    plain_out = _grads(lambda: plain(x.flatten(0, 1)).unflatten(0, (2, 3)), [x], params, grad)
    for got, want in zip(lean_out, plain_out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    hidden = 2 * 3 * 12 * 8 * 8 * 4
    weights = sum(p.numel() * 4 for p in params if p.dim() > 1 or p.numel() > 1)
    saved = _saved_bytes(lambda: mixer(x))
    assert saved <= x.numel() * 4 + hidden + weights + 64
    biases = (12 + 4) * 4  # the lean backward keeps the biases (plain autograd does not)
    assert _saved_bytes(lambda: plain(x.flatten(0, 1))) >= saved + hidden - biases


@pytest.mark.parametrize(
    ("activation", "slope", "keeps_output"),
    [("prelu", 0.25, True), ("prelu", -0.2, False), ("prelu", 0.0, False), ("relu", None, True),
     ("leaky_relu", None, True), ("gelu", None, False)],
)  # fmt: skip
def test_a_sign_keeping_activation_runs_in_place_and_only_its_output_is_kept(
    activation, slope, keeps_output
):
    """A leaky ReLU with a slope >= 0 tells the backward everything from its output (a
    PReLU slope's own gradient from output / slope, so not at slope 0): one hidden map
    kept either way, and the same gradients as plain autograd for every slope."""
    torch.manual_seed(0)
    mixer = Mixer(4, 4, hidden=12, kernel=3, activation=activation, dropout=0.0,
                  padding="reflect")  # fmt: skip
    if slope is not None:
        with torch.no_grad():
            mixer[1].weight.fill_(slope)
    x = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    kept: list[torch.Tensor] = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = mixer(x)
    hidden = [t for t in kept if t.shape[-3:] == (12, 8, 8)]
    assert len(hidden) == 1
    with torch.no_grad():
        before = mixer[0](x.flatten(0, 1))
        after = mixer[1](before)
    assert torch.equal(hidden[0], after if keeps_output else before)
    grad = torch.randn(out.shape)
    params = list(mixer.parameters())
    got = torch.autograd.grad(out, [x, *params], grad)
    plain = nn.Sequential(*mixer)
    want = torch.autograd.grad(plain(x.flatten(0, 1)).unflatten(0, (2, 3)), [x, *params], grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_attention_keeps_only_its_input_and_recomputes_q_k_v(monkeypatch):
    """A Q/K/V convolution is run again in the backward: the cell keeps its norm's output
    (the attention's input) and nothing of q, k, v; a Q/K/V layer that cannot be re-run
    (here: one with a hook) keeps q, k and v instead. Gradients equal either way."""
    torch.manual_seed(0)
    block = Block("L0", 8, 8, window=4, patch=2, padding="reflect", heads=2)
    x = torch.randn(1, 2, 8, 16, 16, requires_grad=True)
    one_map = x.numel() * 4
    weights = sum(p.numel() * 4 for p in block.parameters())
    recomputed = _saved_bytes(lambda: block(x))
    assert recomputed <= one_map + weights + 1024  # (and the norm's statistics)
    grad = torch.randn(x.shape)
    params = list(block.parameters())
    got = _grads(lambda: block(x), [x], params, grad)
    cell = block.cells[0]
    cell.attn.qkv.register_forward_hook(lambda *args: None)
    kept = _saved_bytes(lambda: block(x))
    assert kept >= recomputed + 3 * one_map
    hooked = _grads(lambda: block(x), [x], params, grad)
    monkeypatch.setattr(lean, "LEAN_TRAINING", False)
    plain = _grads(lambda: block(x), [x], params, grad)
    for a, b, c in zip(got, hooked, plain, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)


def test_double_backward_through_lean_ops():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect").double()
    mixer = Mixer(3, 3, hidden=4, kernel=3, activation="prelu", dropout=0.0, padding="reflect")
    mixer = mixer.double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.double, requires_grad=True)

    def fn(t):
        return mixer(lean.conv2d(conv, t).unsqueeze(0)).square().sum()

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_attention_cells_gradcheck():
    torch.manual_seed(0)
    block = Block(
        "L1G1T1", 2, 2, window=4, patch=2, heads=2, padding="reflect",
        rel_pos_bias="after_softmax", mixer_ratio=1.0,
    ).double()  # fmt: skip
    x = torch.randn(1, 2, 2, 8, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block(t).square().sum(), (x,), fast_mode=True)


def test_plain_modules_run_where_autograd_does_not_record_or_autocast_is_on():
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        assert not lean.use_lean(x, conv)
    assert lean.use_lean(x, conv)  # the weights need gradients
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lean.use_lean(x, conv)
    conv.requires_grad_(False)
    assert not lean.use_lean(x, conv)


@pytest.mark.parametrize("arch", ["reference-unet", "unet-2d-small"])
def test_backbone_gradients_equal_plain_autograd(arch, monkeypatch):
    """The whole model, lean or not: the same output and parameter gradients."""
    spec = stcnnt_dsl.load_spec(arch).model_dump(exclude_none=True, round_trip=True)
    spec["defaults"]["drop_path"] = 0.0
    if arch == "reference-unet":  # small but the same cells: reflect, PReLU, 5x5, dense
        spec["unet"]["channels"] = [8, 16, 32]
        spec["defaults"]["heads"] = 4
    model = stcnnt_dsl.build(spec, seed=0).train()
    x = torch.randn(1, 2, 1, 32, 32)
    grad = torch.randn(model(x).shape)
    params = list(model.parameters())
    got = _grads(lambda: model(x), [], params, grad)
    monkeypatch.setattr(lean, "LEAN_TRAINING", False)
    want = _grads(lambda: model(x), [], params, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_a_block_trains_with_less_saved_memory(monkeypatch):
    block = Block("L1G1T1", 8, 8, window=4, patch=2, padding="reflect", activation="prelu")
    x = torch.randn(1, 2, 8, 16, 16, requires_grad=True)
    lean_bytes = _saved_bytes(lambda: block(x))
    monkeypatch.setattr(lean, "LEAN_TRAINING", False)
    plain_bytes = _saved_bytes(lambda: block(x))
    assert lean_bytes < 0.7 * plain_bytes


@pytest.mark.parametrize("qkv", ["fused", "separate"])
def test_lora_adapters_count_in_training_and_inference(qkv, forced):
    """PEFT's LoRA layer wraps a conv and adds its adapter in its own forward: the lean,
    fused and separate-Q/K/V paths must call it rather than read its base weights."""
    peft = pytest.importorskip("peft", reason="PEFT (the [adapt] extra) is not installed")
    forced(qkv=qkv)
    spec = "unet(channels=[8], blocks=L1T1, window=4, patch=2, padding=reflect, activation=prelu)"
    model = stcnnt_dsl.build(spec, seed=0)
    config = peft.LoraConfig(
        r=2, target_modules=stcnnt_dsl.lora_targets(model), init_lora_weights=False
    )  # fmt: skip  (random B: a real delta)
    adapted = stcnnt_dsl.apply_lora(model, config)
    x = torch.randn(1, 2, 1, 8, 8)
    train_out = adapted.train()(x)
    assert train_out.requires_grad  # the lean path's condition holds
    with torch.no_grad():
        eval_out = adapted.eval()(x)
        merged = adapted.merge_and_unload().eval()
        want = merged(x)
        assert not torch.allclose(want, stcnnt_dsl.build(spec, seed=0).eval()(x), atol=1e-3)
    torch.testing.assert_close(train_out.detach(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(eval_out, want, rtol=1e-4, atol=1e-5)


def test_hooks_on_convs_fire_in_training_and_inference():
    block = Block("L1T1", 8, 8, window=4, patch=2, padding="reflect", activation="prelu")
    calls: dict[str, int] = {}
    for name, m in block.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(
                lambda m, i, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1)
            )
    x = torch.randn(1, 2, 8, 8, 8)
    block.train()(x).sum().backward()
    assert calls and all(v == 1 for v in calls.values()), calls
    with torch.no_grad():
        block.eval()(x)
    assert all(v == 2 for v in calls.values()), calls
