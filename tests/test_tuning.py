"""Per-machine choices (stcnnt_dsl.nn.tuning): every choice gives the same results, the
environment forces or disables them, the calibration is cached per machine and never
runs at import."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import stcnnt_dsl
import stcnnt_dsl.nn.functional as nnf
from stcnnt_dsl.errors import STCNNTError
from stcnnt_dsl.nn import tuning

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {
    "defaults": {"window": 4, "patch": 2, "heads": 2, "padding": "reflect",
                 "activation": "prelu", "mixer_kernel": 5, "dense": True,
                 "rel_pos_bias": "after_softmax", "drop_path": 0.0},
    "unet": {"channels": [8, 16], "blocks": "T1L1G1"},
}  # fmt: skip


def _run(model, x, grad):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(grad)
    with torch.no_grad():
        model.eval()
        inference = model(x)
        model.train()
    grads = [p.grad.clone() for p in model.parameters()]
    return [out.detach(), inference, *grads]


def test_every_choice_gives_the_same_outputs_and_gradients(forced):
    model = stcnnt_dsl.build(SPEC, seed=0, dtype=torch.double).train()
    x = torch.randn(1, 3, 1, 16, 16, dtype=torch.double)
    grad = torch.randn(1, 3, 8, 16, 16, dtype=torch.double)
    forced()
    want = _run(model, x, grad)
    for values in (
        {"layout_train": "nchw", "layout_infer": "nchw"},
        {"layout_train": "nchw", "qkv": "separate"},
        {"qkv": "separate", "sdpa_min_tokens": 0},
        {"layout_infer": "nchw", "sdpa_min_tokens": tuning.NEVER},
    ):
        forced(**values)
        for got, ref in zip(_run(model, x, grad), want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_feature_maps_follow_the_layout(forced):
    model = stcnnt_dsl.build(SPEC, seed=0).eval()
    seen = []
    for module in model.modules():
        # (a 1-channel input is stored both ways; its convs follow torch's own choice)
        if isinstance(module, torch.nn.Conv2d) and module.in_channels > 1:
            module.register_forward_hook(lambda m, args, out: seen.append(out))
    x = torch.randn(1, 2, 1, 16, 16)
    for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        forced(layout_infer=layout)
        seen.clear()
        with torch.no_grad():
            model(x)
        assert seen and all(t.is_contiguous(memory_format=fmt) for t in seen), layout


@pytest.mark.parametrize("channels_last", [True, False])
def test_frame_tokens_round_trip_and_gradient(channels_last):
    y = torch.randn(6, 12, 4, 5, dtype=torch.double)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    *_, v = nnf.frame_tokens(y, 2, 3, 2, channels_last)
    back = nnf.frames_from_tokens(v, 2, (4, 5), channels_last)
    torch.testing.assert_close(back, y[:, 8:])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert back.is_contiguous(memory_format=fmt)
    y.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: nnf.frame_tokens(t, 2, 3, 2, channels_last), (y,), fast_mode=True
    )


@pytest.mark.parametrize("mode", ["local", "global"])
def test_partition_of_nchw_maps_matches_channels_last(mode):
    x = torch.randn(2, 3, 8, 8, 12, dtype=torch.double)  # [N, G, C, H, W], NCHW storage
    cl = x.flatten(1, 2).contiguous(memory_format=torch.channels_last).unflatten(1, (3, 8))
    a = nnf.partition_qkv(x.requires_grad_(), (4, 4), (2, 2), mode, 4)
    b = nnf.partition_qkv(cl, (4, 4), (2, 2), mode, 4)
    for got, want in zip(a, b, strict=True):
        torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(a, x, [torch.ones_like(t) for t in a])[0]
    assert grads.is_contiguous()  # written back in the input's own layout
    out = nnf.unpartition_heads(a[0], (8, 12), (4, 4), (2, 2), mode, channels_last=False)
    assert out.is_contiguous()
    torch.testing.assert_close(out, x[:, 0])


def test_environment_forces_choices(monkeypatch):
    monkeypatch.setenv(tuning.ENV_CALIBRATE, "0")
    monkeypatch.setenv(tuning.ENV_TUNING, "layout=nchw, qkv=separate, attention=matmul")
    tuning.reset()
    try:
        got = tuning.choices()
        assert (got.layout_train, got.layout_infer, got.qkv) == ("nchw", "nchw", "separate")
        assert got.sdpa_min_tokens == tuning.NEVER and got.source == "forced"
        monkeypatch.setenv(tuning.ENV_TUNING, "attention=48,layout_infer=channels_last")
        tuning.reset()
        assert tuning.choices().sdpa_min_tokens == 48
        monkeypatch.setenv(tuning.ENV_TUNING, "layout=fast")
        tuning.reset()
        with pytest.raises(STCNNTError, match=r"STCNNT_TUNING.*layout=fast"):
            tuning.choices()
    finally:
        tuning.reset()


def test_rules_train_nchw_without_avx512(monkeypatch):
    monkeypatch.setattr(tuning, "_cpu_flags_and_model", lambda: ({"avx2", "fma"}, "old"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert tuning.rules().layout_train == "nchw"
    assert tuning.rules().layout_infer == "channels_last"
    flags = {"avx2", "avx512f", "amx_tile"}
    monkeypatch.setattr(tuning, "_cpu_flags_and_model", lambda: (flags, "new"))
    assert tuning.rules().layout_train == "channels_last"
    assert torch.device("cuda").type and tuning.choices("cuda").sdpa_min_tokens == 0


def test_calibration_is_cached_per_machine_and_disabled_by_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(tuning.ENV_TUNING, raising=False)
    monkeypatch.setenv(tuning.ENV_CALIBRATE, "0")
    tuning.reset()
    try:
        assert tuning.choices().source == "rules"
        assert not tuning.cache_path().exists()
        monkeypatch.setenv(tuning.ENV_CALIBRATE, "1")
        calls = []
        real = tuning.calibrate
        monkeypatch.setattr(tuning, "calibrate", lambda base: calls.append(1) or real(base))
        tuning.reset()
        with torch.inference_mode():  # a first forward is often an inference: the
            first = tuning.choices()  # training problems must still get autograd
        assert first.source == "calibrated" and calls == [1]
        entry = json.loads(tuning.cache_path().read_text())[tuning.machine_key()]
        assert entry["choices"]["layout_train"] in tuning.LAYOUTS
        assert entry["measured_ms"]["conv_train_nchw"] > 0
        measured_again = []
        monkeypatch.setattr(
            tuning, "attention_threshold", lambda base: measured_again.append(1) or 48
        )
        tuning.reset()
        again = tuning.choices()  # layouts and Q/K/V from the cache, attention measured anew
        assert calls == [1] and measured_again == [1]
        assert again == dataclasses.replace(first, sdpa_min_tokens=48)
    finally:
        tuning.reset()


def test_calibration_keeps_the_rule_unless_another_option_clearly_wins():
    assert tuning._pick("fused", {"fused": 1.04, "separate": 1.0}) == "fused"
    assert tuning._pick("fused", {"fused": 1.2, "separate": 1.0}) == "separate"


def test_nothing_is_measured_at_import(tmp_path):
    env = {**os.environ, tuning.ENV_CACHE: str(tmp_path), tuning.ENV_CALIBRATE: "1"}
    code = "import stcnnt_dsl, stcnnt_dsl.nn; stcnnt_dsl.build('unet-2d-small')"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert not (tmp_path / "tuning.json").exists()
