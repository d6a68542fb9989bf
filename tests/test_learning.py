"""Proof that the models learn: short versions of the examples in examples/ (synthetic
moving shapes, generated in code), with thresholds a model that did not learn would miss.

The full runs' measured numbers are in the README ("Does it learn?");
these use fewer steps and fewer held-out clips, so the thresholds are lower, but each is
far from what an untrained model or a constant prediction scores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import stcnnt_dsl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import classify_motion  # noqa: E402
import pretrain_then_adapt  # noqa: E402
import segment_moving_shapes  # noqa: E402
from synthetic import moving_shapes  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_synthetic_clips_are_what_they_say():
    clips = moving_shapes(64, frames=5, size=32, shapes=1, noise=0.0, seed=3)
    assert clips.noisy.shape == (64, 5, 1, 32, 32) and clips.masks.shape == (64, 5, 32, 32)
    assert torch.equal(clips.noisy, clips.clean)  # noise 0
    assert torch.equal(moving_shapes(8, seed=1).noisy, moving_shapes(8, seed=1).noisy)
    area = clips.masks.sum(dim=(2, 3)).float()
    assert (area > 0).all()  # in every frame, and never cut by the border:
    border = clips.masks[..., [0, -1], :].sum() + clips.masks[..., :, [0, -1]].sum()
    assert border == 0
    # the shape's centre moves along its direction: right, left, down, up
    ys = torch.arange(32.0)
    m = clips.masks.float()
    cy = (m.sum(3) * ys).sum(2) / area
    cx = (m.sum(2) * ys).sum(2) / area
    moved = torch.stack([cy[:, -1] - cy[:, 0], cx[:, -1] - cx[:, 0]], dim=1)
    expected = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])[clips.direction]
    assert (moved * expected).sum(1).min() > 2  # at least 1 px a frame over 4 steps
    assert (moved.abs() * (expected == 0)).sum(1).max() < 0.5  # not sideways


def test_segmentation_learns_moving_shapes():
    result = segment_moving_shapes.run(15, seed=1, test_clips=64)
    assert result["loss last 10"] < 0.5 * result["loss first 10"]
    # untrained ~0.15 (about what "everything is a shape" scores: 0.23); full run ~0.95
    assert result["dice untrained"] < 0.4
    assert result["dice held-out"] > 0.7


def test_plain_temporal_attention_cannot_tell_a_clip_from_its_reverse():
    """Why classify_motion uses causal temporal attention: without a position encoding,
    a model of T, L and G cells is equivariant to the order of the frames, so pooled
    features (and any direction read from them) are the same played backwards."""
    x = moving_shapes(2, frames=4, shapes=1, seed=0).noisy
    plain = stcnnt_dsl.build(classify_motion.SPEC.replace('"T1[causal=true] L1 G1"', "T1L1G1"),
                             seed=0).eval()  # fmt: skip
    causal = stcnnt_dsl.build(classify_motion.SPEC, seed=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x.flip(1))["motion"], plain(x)["motion"])
        assert not torch.allclose(causal(x.flip(1))["motion"], causal(x)["motion"], atol=1e-4)


@pytest.mark.slow
def test_motion_direction_is_learned_from_the_order_of_the_frames():
    # the loss sits at ln 4 for ~50 steps, then the axis is learned, then the sign
    result = classify_motion.run(160, seed=0, test_clips=128)
    assert result["loss last 10"] < 0.7 * result["loss first 10"]
    assert result["accuracy held-out"] > 0.5  # chance: 0.25
    assert result["accuracy reversed clips"] > 0.5  # read backwards, the opposite


def test_pretrain_then_adapt_with_lora_learns_with_few_trainable_parameters():
    pytest.importorskip("peft", reason="PEFT (the [adapt] extra) is not installed")
    result = pretrain_then_adapt.run(25, 20, size=16, seed=0, test_clips=64, compare=False)
    pre, lora = result["pretrain"], result["lora"]
    assert pre["mse last 10"] < 0.5 * pre["mse first 10"]  # the denoiser learned
    assert lora["trainable params"] < 0.25 * result["total params"]
    # measured 0.50 after these 20 steps (untrained ~0.15, "all shape" 0.23; the full
    # run reaches 0.90)
    assert lora["dice held-out"] > 0.4


def test_param_groups_and_freeze_see_through_the_lora_wrapper():
    """`apply_lora` returns PEFT's wrapper; param_groups (and freeze) must accept it, as
    adapt.py's docstring shows, and hand the optimizer exactly the trainable parameters."""
    peft = pytest.importorskip("peft", reason="PEFT (the [adapt] extra) is not installed")
    from stcnnt_dsl.tools.adapt import apply_lora

    model = stcnnt_dsl.build(pretrain_then_adapt.SEGMENTER, seed=0)
    config = peft.LoraConfig(r=2, target_modules=stcnnt_dsl.lora_targets(model),
                             modules_to_save=["heads.seg"])  # fmt: skip
    adapted = apply_lora(model, config)
    groups = stcnnt_dsl.param_groups(adapted, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in adapted.parameters() if p.requires_grad)
    names = {n for g in groups for n in g["names"]}
    assert any("lora_A" in n for n in names) and any(n.startswith("heads.seg") for n in names)
    assert sorted(stcnnt_dsl.freeze(adapted, "decoder.*")) == ["decoder.0", "decoder.1"]
    assert not any(p.requires_grad for n, p in adapted.named_parameters() if ".decoder." in n)
