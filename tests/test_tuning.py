"""Per-machine choices (stcnnt_dsl.nn.tuning): every choice gives the same results, the
environment forces each of them or fails clearly, `stcnnt tune` measures and caches them
per machine, and nothing is measured anywhere else (not at import, not in a first
forward, a profiler, a FLOP counter, a trace, torch.compile or an export)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import stcnnt_dsl
import stcnnt_dsl.nn.functional as nnf
from stcnnt_dsl.errors import STCNNTError
from stcnnt_dsl.nn import tuning
from stcnnt_dsl.tools.tune import decide, tune

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


def test_weights_follow_the_layout_both_ways_and_keep_the_feature_maps_in_it(forced):
    """`weights_in_layout`: 2D convolution weights channels-last where both layouts are,
    NCHW again where either is not (a channels-last weight would make the convolution's
    output channels-last); C3's 3D weights untouched; the same outputs and gradients."""
    from stcnnt_dsl.nn.layout import weights_in_layout

    spec = "unet(channels=[8, 16], blocks=L1C3, window=4, patch=2, padding=reflect)"
    model = stcnnt_dsl.build(spec, seed=0, dtype=torch.double).train()
    x = torch.randn(1, 2, 1, 16, 16, dtype=torch.double)
    grad = torch.randn(1, 2, 8, 16, 16, dtype=torch.double)
    forced()  # channels-last both ways
    want = _run(model, x, grad)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1]
    conv3d = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert weights_in_layout(model) is model
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(c.weight.is_contiguous() for c in convs if c.in_channels > 1)
    assert conv3d.weight.is_contiguous()
    for got, ref in zip(_run(model, x, grad), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    forced(layout_train="nchw")
    weights_in_layout(model)
    assert all(c.weight.is_contiguous() for c in convs)
    seen = []
    for c in convs:
        if c.in_channels > 1:  # (a 1-channel input is stored both ways)
            c.register_forward_hook(lambda m, args, out: seen.append(out))
    model(x)
    assert seen and all(t.is_contiguous() for t in seen)  # training stays NCHW


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


FORCED = {
    "layout=nchw": {"layout_train": "nchw", "layout_infer": "nchw"},
    "layout=channels_last": {"layout_train": "channels_last", "layout_infer": "channels_last"},
    "layout_train=nchw": {"layout_train": "nchw"},
    "layout_train=channels_last": {"layout_train": "channels_last"},
    "layout_infer=nchw": {"layout_infer": "nchw"},
    "layout_infer=channels_last": {"layout_infer": "channels_last"},
    "qkv=fused": {"qkv": "fused"},
    "qkv=separate": {"qkv": "separate"},
    "attention=sdpa": {"sdpa_min_tokens": 0},
    "attention=matmul": {"sdpa_min_tokens": tuning.NEVER},
    "attention=48": {"sdpa_min_tokens": 48},
    " Layout = NCHW , qkv=separate": {"layout_train": "nchw", "layout_infer": "nchw",
                                      "qkv": "separate"},
}  # fmt: skip


@pytest.fixture
def environment(monkeypatch, tmp_path):
    """A fresh machine: an empty cache dir, calibration on, nothing forced."""
    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv(tuning.ENV_CALIBRATE, "1")
    monkeypatch.delenv(tuning.ENV_TUNING, raising=False)
    tuning.reset()
    yield monkeypatch
    tuning.reset()


@pytest.mark.parametrize("value", list(FORCED))
def test_every_tuning_value_is_forced_and_runs(environment, value):
    model = stcnnt_dsl.build(SPEC, seed=0, dtype=torch.double).train()
    x = torch.randn(1, 3, 1, 16, 16, dtype=torch.double)
    grad = torch.randn(1, 3, 8, 16, 16, dtype=torch.double)
    want = _run(model, x, grad)  # the rules
    environment.setenv(tuning.ENV_TUNING, value)
    tuning.reset()
    got = tuning.choices()
    assert got.source == "forced"
    assert {k: getattr(got, k) for k in FORCED[value]} == FORCED[value]
    for a, b in zip(_run(model, x, grad), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "value", ["layout=fast", "qkv=two", "attention=-1", "attention=flash", "speed=max", "nchw"]
)
def test_a_bad_tuning_value_is_one_clear_error(environment, value):
    environment.setenv(tuning.ENV_TUNING, value)
    model = stcnnt_dsl.build(SPEC, seed=0)
    with pytest.raises(STCNNTError, match=rf"STCNNT_TUNING=.*{value}.*layout_train"):
        model(torch.randn(1, 2, 1, 16, 16))


def test_the_cli_says_a_bad_tuning_value_and_exits_2(environment, capsys):
    from stcnnt_dsl import cli

    environment.setenv(tuning.ENV_TUNING, "attention=flash")
    assert cli.main(["profile", "unet-2d-small", "--input", "1,1,1,32,32", "--runs", "1"]) == 2
    assert "STCNNT_TUNING='attention=flash'" in capsys.readouterr().err


def test_rules_train_nchw_without_avx512(monkeypatch):
    from stcnnt_dsl.machine import CPU

    monkeypatch.setattr(tuning, "cpu", lambda: CPU("old", frozenset({"avx2", "fma"})))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert tuning.rules().layout_train == "nchw"
    assert tuning.rules().layout_infer == "channels_last"
    flags = {"avx2", "avx512f", "amx_tile"}
    monkeypatch.setattr(tuning, "cpu", lambda: CPU("new", frozenset(flags)))
    assert tuning.rules().layout_train == "channels_last"
    assert tuning.rules({"avx2"}).layout_train == "nchw"
    assert torch.device("cuda").type and tuning.choices("cuda").sdpa_min_tokens == 0


def _tiny_tune(**kw):
    return tune(SPEC, (1, 2, 1, 16, 16), repeats=1, attention_pixels=2048, **kw)


def test_tune_writes_the_cache_that_later_choices_read(environment):
    assert tuning.choices().source == "rules"  # a fresh machine: the rules, nothing measured
    assert not tuning.cache_path().exists()
    with torch.inference_mode():  # the training steps still get autograd
        result = _tiny_tune()
    assert result.path == tuning.cache_path()
    entry = json.loads(result.path.read_text())[tuning.machine_key()]
    assert entry["choices"] == tuning.as_dict(result.chosen)
    assert set(entry["measured_ms"]["layout_train"]) == set(tuning.LAYOUTS)
    assert all(t > 0 for t in entry["measured_ms"]["qkv"]["separate"])
    assert tuning.choices() == result.chosen  # the cache is read from now on
    measured = dataclasses.replace(result.chosen, layout_train="nchw", qkv="separate")
    tuning.write_cache_entry({**entry, "choices": tuning.as_dict(measured)})
    assert tuning.choices() == measured
    environment.setenv(tuning.ENV_TUNING, "qkv=fused")
    tuning.reset()
    assert tuning.choices() == dataclasses.replace(measured, qkv="fused", source="forced")
    environment.setenv(tuning.ENV_CALIBRATE, "0")  # the cache ignored
    environment.delenv(tuning.ENV_TUNING)
    tuning.reset()
    assert tuning.choices() == tuning.rules()
    environment.setenv(tuning.ENV_CALIBRATE, "1")
    tuning.write_cache_entry({**entry, "version": tuning.CALIBRATION_VERSION - 1})
    assert tuning.choices() == tuning.rules()  # measured by another version: not used


def test_dry_run_writes_nothing(environment):
    assert _tiny_tune(write=False).path is None
    assert not tuning.cache_path().exists()


@pytest.mark.parametrize(
    "text", ["[1, 2]", "{not json", '{"KEY": {"version": 3, "choices": {"qkv": "four"}}}']
)
def test_a_broken_cache_is_one_clear_error(environment, text):
    tuning.cache_path().write_text(text.replace("KEY", tuning.machine_key()))
    with pytest.raises(STCNNTError, match=r"tuning.json.*stcnnt tune"):
        tuning.choices()


def test_tune_keeps_the_rule_unless_another_option_clearly_wins():
    rule, fast = "fused", "separate"
    assert decide(rule, {rule: [1.0, 1.0, 1.0], fast: [0.97, 0.97, 0.97]})[0] == rule  # noise
    assert decide(rule, {rule: [1.0, 1.0, 1.0], fast: [0.8, 0.8, 1.01]})[0] == rule  # lost once
    assert decide(rule, {rule: [1.0, 1.0, 1.0], fast: [0.9, 0.8, 0.94]})[0] == fast
    assert decide(rule, {rule: [1.0, 1.0], fast: [1.5, 1.2]})[0] == rule


@pytest.mark.slow
def test_the_cli_tunes(environment, capsys):
    from stcnnt_dsl import cli

    args = ["tune", "--arch", "unet-2d-small", "--input", "1,1,1,32,32", "--repeats", "1"]
    assert cli.main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["choices"]["layout_train"] in tuning.LAYOUTS and out["path"]
    assert tuning.choices().source == "calibrated"


# ------------------------------------------------ nothing is measured in the user's work


def _flop_counter(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def _profiler(model, x):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    return {e.key for e in prof.key_averages()}


def _dispatch_mode(model, x):
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Seen():
        model(x)
    return len(seen)


def _trace(model, x):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model, (x,), check_trace=False)(x).shape


def _compile(model, x):
    return torch.compile(model, backend="eager", fullgraph=False)(x).shape


def _export(model, x):
    return torch.export.export(model, (x,)).module()(x).shape


def _first_forward(model, x):
    return model(x).shape


# A cache as `stcnnt tune` writes it, with every choice off the rules.
TUNED = {
    "choices": {"layout_infer": "nchw", "layout_train": "nchw", "qkv": "separate",
                "sdpa_min_tokens": 0},
    "version": tuning.CALIBRATION_VERSION,
}  # fmt: skip
CONTEXTS = {"flop_counter": _flop_counter, "profiler": _profiler,
            "dispatch_mode": _dispatch_mode, "trace": _trace, "compile": _compile,
            "export": _export, "first_forward": _first_forward}  # fmt: skip


@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "tuned"])
@pytest.mark.parametrize(
    "context",
    [pytest.param(c, marks=pytest.mark.slow) if c in ("trace", "compile", "export") else c
     for c in CONTEXTS],
)  # fmt: skip
def test_nothing_is_measured_inside_the_users_work(environment, context, cached):
    if cached:
        tuning.write_cache_entry(TUNED)
    written = tuning.cache_path().read_bytes() if cached else None

    def no_timing(*args, **kwargs):
        raise AssertionError("something was timed inside the user's work")

    environment.setattr(tuning, "interleaved_times", no_timing)
    model = stcnnt_dsl.build(SPEC, seed=0).eval()
    x = torch.randn(1, 2, 1, 16, 16)
    CONTEXTS[context](model, x)
    assert tuning.choices().source == ("calibrated" if cached else "rules")
    assert (tuning.cache_path().read_bytes() if cached else None) == written
    assert cached or not tuning.cache_path().exists()


@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "tuned"])
def test_profile_flops_equal_flop_counter_mode_with_calibration_on(environment, cached):
    if cached:
        tuning.write_cache_entry(TUNED)
    arch = "unet(channels=[8, 16], blocks=T1)"
    report = stcnnt_dsl.profile(arch, (1, 4, 1, 64, 64), runs=1, warmup=0)
    assert report.flop_counts["torch"] == report.flop_counts["analytic"] == report.flops
    fvcore = stcnnt_dsl.profile(arch, (1, 4, 1, 64, 64), runs=0, flop_counter="fvcore")
    assert fvcore.flops == report.flops
    from torch.utils.flop_counter import FlopCounterMode

    model = stcnnt_dsl.build(arch).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 4, 1, 64, 64))
    assert counter.get_total_flops() == report.flops


def test_nothing_is_measured_at_import(tmp_path):
    env = {**os.environ, tuning.ENV_CACHE: str(tmp_path), tuning.ENV_CALIBRATE: "1"}
    code = "import stcnnt_dsl, stcnnt_dsl.nn; stcnnt_dsl.build('unet-2d-small')"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert not (tmp_path / "tuning.json").exists()
