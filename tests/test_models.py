"""Whole models: a backbone with task heads from the spec's `heads:`, saved and loaded,
imported from the reference's whole-model checkpoints, weights reused part by part, and
adapted with LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import stcnnt_dsl
from stcnnt_dsl import SpecError, STCNNTError, WeightsError
from stcnnt_dsl.graph import build_graph, estimate
from stcnnt_dsl.nn.heads import ConvAvgHead, ConvHead, UperNetHead
from stcnnt_dsl.tools.adapt import apply_lora, freeze, lora_targets, param_groups
from stcnnt_dsl.tools.flops import count_flops_torch
from stcnnt_dsl.tools.weights import load_weights

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
WHOLE = REFERENCE / "reference-unet-convpoollinear.safetensors"
BACKBONE = REFERENCE / "reference-unet.safetensors"
needs_fixtures = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference fixtures not found: {REFERENCE}"
)

HEADS = {
    "seg": {"kind": "segmentation", "classes": 3},
    "fpn": {"kind": "segmentation", "classes": 2, "decoder": "upernet", "bins": [1, 2]},
    "label": {"kind": "classification", "classes": 4, "pooling": "conv_avg", "hidden": 16},
    "frame": {"kind": "classification", "classes": 5, "per_frame": True},
    "clean": {"kind": "enhancement", "out_channels": 1, "residual": True},
    "deep": {"kind": "enhancement", "out_channels": 2, "decoder": "multidepth", "depth": 2},
    "unetr": {"kind": "enhancement", "out_channels": 1, "decoder": "unetr"},
}
SPEC = {
    "defaults": {"window": 4, "patch": 2},
    "unet": {"channels": [8, 16], "blocks": "T1L1G1"},
    "heads": HEADS,
}


def _x(b: int = 2, t: int = 3, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.randn(b, t, 1, h, w, generator=torch.Generator().manual_seed(0))


def test_a_spec_with_heads_builds_a_model_with_one_output_per_head():
    model = stcnnt_dsl.build(SPEC, seed=0)
    assert isinstance(model, stcnnt_dsl.Model) and isinstance(model.backbone, stcnnt_dsl.Backbone)
    assert list(model.heads) == list(HEADS) and model.spec == stcnnt_dsl.load_spec(SPEC)
    out = model(_x())
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "seg": (2, 3, 3, 16, 16), "fpn": (2, 3, 2, 16, 16), "label": (2, 4),
        "frame": (2, 3, 5), "clean": (2, 3, 1, 16, 16), "deep": (2, 3, 2, 16, 16),
        "unetr": (2, 3, 1, 16, 16),
    }  # fmt: skip
    assert stcnnt_dsl.infer_shapes(SPEC, (2, 3, 1, 16, 16))["heads"] == {
        k: tuple(v.shape) for k, v in out.items()
    }
    assert isinstance(model.heads["seg"], ConvHead) and isinstance(model.heads["fpn"], UperNetHead)
    # the backbone is the same as without heads (same seed: same weights, same features)
    plain = stcnnt_dsl.build({k: v for k, v in SPEC.items() if k != "heads"}, seed=0)
    for name, value in plain.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value)


def test_in_an_expression_a_mapping_names_task_heads_and_a_number_attention_heads():
    attention = stcnnt_dsl.load_spec("unet(channels=[8], blocks=L1, heads=4)")
    assert not attention.heads and attention.unet.heads == 4
    task = stcnnt_dsl.load_spec(
        "unet(channels=[8], blocks=L1, heads={seg={kind=segmentation, classes=2}})"
    )
    assert list(task.heads) == ["seg"] and task.unet.heads != 4
    assert stcnnt_dsl.build(task, seed=0).heads["seg"] is not None


def test_heads_read_what_they_should():
    model = stcnnt_dsl.build(SPEC, seed=0).eval()
    x = _x()
    with torch.no_grad():
        out = model(x)
        y = model.backbone(x)
        seg = model.heads["seg"].conv
        want = torch.nn.functional.conv2d(y.flatten(0, 1), seg.weight, seg.bias)
        torch.testing.assert_close(out["seg"], want.unflatten(0, y.shape[:2]))
        enhanced = model.heads["clean"].conv
        want = torch.nn.functional.conv2d(y.flatten(0, 1), enhanced.weight, enhanced.bias)
        torch.testing.assert_close(out["clean"], want.unflatten(0, y.shape[:2]) + x)  # residual
    # a classification depends on every frame; a per-frame one on its own frame only
    x1 = x.clone()
    x1[:, 2] += 1
    with torch.no_grad():
        out1 = model(x1)
    assert not torch.allclose(out["label"], out1["label"])


def test_costs_of_heads_are_exact_and_agree_with_flop_counter_mode():
    graph = build_graph(SPEC)
    model = stcnnt_dsl.build(SPEC, seed=0)
    assert estimate(SPEC).params == sum(p.numel() for p in model.parameters())
    modules = dict(model.named_modules())
    for head in graph.heads:
        want = sum(p.numel() for p in modules[head.name].parameters())
        assert graph.per_node(graph.params())[head.name] == want, head.name
    shape = (2, 3, 1, 16, 16)
    with torch.device("meta"):
        meta = stcnnt_dsl.build(SPEC)
        x = torch.empty(shape)
    counted = count_flops_torch(meta, x)
    analytic = stcnnt_dsl.profile(SPEC, shape, runs=0)
    assert analytic.flops == counted.total
    for head in graph.heads:
        row = next(r for r in analytic.per_module if r.name == head.name)
        assert row.flops == counted.by_module.get(head.name, 0), head.name


def test_save_and_load_a_whole_model_bit_identically(tmp_path):
    model = stcnnt_dsl.build(SPEC, seed=0, layout="BCTHW")
    path = stcnnt_dsl.save_model(model, tmp_path / "m.safetensors")
    loaded = stcnnt_dsl.load_model(path)
    assert isinstance(loaded, stcnnt_dsl.Model) and loaded.layout == "BCTHW"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = _x().transpose(1, 2)
    with torch.no_grad():
        a, b = model.eval()(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["seg"].shape == (2, 3, 3, 16, 16)  # [B, classes, T, H, W] in this layout
    assert a["frame"].shape == (2, 3, 5)  # not an image: unchanged


@pytest.mark.parametrize(
    ("heads", "path", "words"),
    [
        ({"s": {"kind": "segmenation", "classes": 2}}, "heads.s.kind",
         'did you mean "segmentation"'),
        ({"s": {"kind": "segmentation", "classes": 0}}, "heads.s.classes", "positive integer"),
        ({"s": {"kind": "segmentation"}}, "heads.s.classes", "needs classes"),
        ({"s": {"kind": "classification", "classes": 2, "decoder": "conv"}}, "heads.s.decoder",
         "not a key of classification heads"),
        ({"s": {"kind": "enhancement", "out_channels": 1, "decoder": "multidepth", "depth": 4}},
         "heads.s.depth", "reads the 4 deepest features but this backbone has 2"),
        ({"s": {"kind": "enhancement", "out_channels": 3, "residual": True}}, "heads.s.residual",
         "out_channels must be the input's 1 channels"),
        ({"S": {"kind": "segmentation", "classes": 2}}, "heads.S", "lower-case identifier"),
    ],
)  # fmt: skip
def test_bad_heads_are_located_spec_errors(heads, path, words):
    with pytest.raises(SpecError) as err:
        stcnnt_dsl.build({**SPEC, "heads": heads})
    assert err.value.path == path and words in str(err.value), str(err.value)


def test_a_bad_head_in_a_file_is_located_at_its_line(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text(
        "unet:\n  channels: [8]\n  blocks: L1\nheads:\n  seg: {kind: segmentation, classes: 2}\n"
        "  d: {kind: enhancement, out_channels: 1, decoder: multidepth}\n"
    )
    with pytest.raises(SpecError) as err:
        stcnnt_dsl.build(path)
    # depth is not written: the error points at the head that needs it
    assert (err.value.path, err.value.line, err.value.column) == ("heads.d.depth", 6, 6)
    assert "has 1 (decoder.0); set depth to at most 1" in str(err.value)


# --------------------------------------------------------------------------- the reference


@needs_fixtures
def test_the_reference_whole_model_imports_with_its_outputs(tmp_path):
    from stcnnt_dsl.compat import import_reference

    model = import_reference(WHOLE).eval()
    assert isinstance(model, stcnnt_dsl.Model) and list(model.heads) == ["classification"]
    assert isinstance(model.heads["classification"], ConvAvgHead)
    with safe_open(str(WHOLE), "pt") as f:
        x, want = f.get_tensor("input"), f.get_tensor("out::output")
    with torch.no_grad():
        got = model(x.transpose(1, 2))["classification"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    # and through the command line, into our own file
    from stcnnt_dsl import cli

    out = tmp_path / "whole.safetensors"
    assert cli.main(["import-reference", str(WHOLE), "--out", str(out)]) == 0
    with torch.no_grad():
        again = stcnnt_dsl.load_model(out)(x.transpose(1, 2))["classification"]
    torch.testing.assert_close(again, got)


@needs_fixtures
@pytest.mark.parametrize(
    ("post", "words"),
    [("SimpleMultidepthConv", "4 backbone features"), ("UNETR3D", "omnivore"),
     ("Fancy", "not a reference head")],
)  # fmt: skip
def test_reference_heads_we_cannot_reproduce_are_refused_naming_post_model(post, words):
    from stcnnt_dsl.compat import import_reference, read_reference

    weights, config = read_reference(WHOLE)
    with pytest.raises(STCNNTError, match=words) as err:
        import_reference(weights, {**config, "post_model": post})
    assert "post_model" in str(err.value)


# --------------------------------------------------------------------------- load_weights


def test_a_backbone_file_fills_a_models_backbone(tmp_path):
    backbone = stcnnt_dsl.build({k: v for k, v in SPEC.items() if k != "heads"}, seed=1)
    path = stcnnt_dsl.save_model(backbone, tmp_path / "backbone.safetensors")
    model = stcnnt_dsl.build(SPEC, seed=0)
    heads_before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    report = load_weights(model, path, part="backbone")
    assert len(report.loaded) == len(backbone.state_dict()) and not report.missing
    for name, value in backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value)
    assert all(torch.equal(model.heads.state_dict()[k], v) for k, v in heads_before.items())
    with pytest.raises(WeightsError, match=r"'heads\.seg\.conv\.weight' is not in the file"):
        load_weights(model, path)  # the whole model from a backbone's file: heads missing
    report = load_weights(model, path, strict=False)
    assert report.missing and all(k.startswith("heads.") for k in report.missing)


def test_one_head_from_another_models_file(tmp_path):
    donor = stcnnt_dsl.build(SPEC, seed=3)
    path = stcnnt_dsl.save_model(donor, tmp_path / "donor.safetensors")
    model = stcnnt_dsl.build(SPEC, seed=0)
    load_weights(model, path, part="heads.seg")
    assert torch.equal(model.heads["seg"].conv.weight, donor.heads["seg"].conv.weight)
    assert not torch.equal(model.backbone.encoder[0].cells[0].attn.qkv.weight,
                           donor.backbone.encoder[0].cells[0].attn.qkv.weight)  # fmt: skip
    with pytest.raises(WeightsError, match="no head 'nope'"):
        load_weights(model, path, part="heads.nope")
    other = stcnnt_dsl.build({**SPEC, "heads": {"seg": {"kind": "segmentation", "classes": 7}}})
    with pytest.raises(WeightsError, match=r"heads\.seg\.conv\.(weight|bias) is \[3"):
        load_weights(other, path, part="heads.seg")


@needs_fixtures
def test_a_reference_backbone_checkpoint_fills_a_model_with_a_new_head():
    from stcnnt_dsl.compat import import_reference, read_reference, reference_spec

    _, config = read_reference(BACKBONE)
    spec = stcnnt_dsl.load_spec(reference_spec(config)).model_dump()
    spec["heads"] = {"seg": {"kind": "segmentation", "classes": 2}}
    model = stcnnt_dsl.build(spec, seed=0)
    load_weights(model, BACKBONE, part="backbone")
    reference = import_reference(BACKBONE)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name


# --------------------------------------------------------------------------- adaptation


def test_lora_targets_are_qkv_and_mixer_layers():
    model = stcnnt_dsl.build(
        {**SPEC, "unet": {**SPEC["unet"], "blocks": "T1 L1[qkv=linear] G0 C2"}}, seed=0
    )
    names = lora_targets(model)
    assert names and all(n.startswith("backbone.") for n in names)
    kinds = {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in names}
    assert kinds == {"attn.qkv", "mixer.0", "mixer.2"}
    modules = dict(model.named_modules())
    assert any(isinstance(modules[n], torch.nn.Linear) for n in names)  # linear Q/K/V
    with pytest.raises(STCNNTError, match="no attention or mixer"):
        lora_targets(stcnnt_dsl.build("llm(channels=8, blocks=C2)"))


def test_lora_on_late_stages_leaves_the_early_ones_without_gradients():
    peft = pytest.importorskip("peft")
    model = stcnnt_dsl.build(SPEC, seed=0)
    late = lora_targets(model, "decoder.*")
    assert late and all(n.startswith("backbone.decoder.") for n in late)
    assert set(late) < set(lora_targets(model))
    config = peft.LoraConfig(r=2, target_modules=late, modules_to_save=["heads.seg"])
    adapted = apply_lora(model, config)
    seen = {}
    for name in ("encoder.0", "decoder.0"):
        module = model.backbone.get_submodule(name)
        module.register_forward_hook(lambda m, i, o, name=name: seen.update({name: o}))
    adapted(_x())["seg"].sum().backward()
    # nothing before the decoder is trained, so autograd keeps nothing of the encoder
    assert not seen["encoder.0"].requires_grad and seen["decoder.0"].requires_grad
    with pytest.raises(STCNNTError, match=r"'decoder9' matches no stage; stages: encoder\.0"):
        lora_targets(model, "decoder9")


def test_an_adapted_model_is_merged_before_saving_and_loaded_before_adapting(tmp_path):
    peft = pytest.importorskip("peft")
    model = stcnnt_dsl.build(SPEC, seed=0)
    plain = stcnnt_dsl.save_model(model, tmp_path / "plain.safetensors")
    adapted = apply_lora(model, peft.LoraConfig(r=2, target_modules=lora_targets(model)))
    with pytest.raises(WeightsError, match=r"save_model: .*LoRA.*merge_and_unload\(\)"):
        stcnnt_dsl.save_model(adapted, tmp_path / "adapted.safetensors")
    assert not (tmp_path / "adapted.safetensors").exists()
    with pytest.raises(WeightsError, match=r"load_weights: .*before apply_lora"):
        load_weights(adapted, plain, part="backbone")
    merged = adapted.merge_and_unload().eval()
    path = stcnnt_dsl.save_model(merged, tmp_path / "merged.safetensors")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(stcnnt_dsl.load_model(path).eval()(x), merged(x))


def test_lora_adapts_merges_to_the_same_outputs_and_runs_in_eval():
    peft = pytest.importorskip("peft", reason="PEFT (the [adapt] extra) is not installed")
    spec = {**SPEC, "defaults": {**SPEC["defaults"], "padding": "reflect"}}
    model = stcnnt_dsl.build(spec, seed=0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets(model),
                             modules_to_save=["heads.seg"])  # fmt: skip
    adapted = apply_lora(model, config)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    assert 0 < trainable < total / 5
    with torch.no_grad():  # LoRA starts at zero; make it matter
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    adapted.eval()  # the fused eval path must step aside for PEFT's wrappers
    x = _x()
    with torch.no_grad():
        before = adapted(x)
        merged = adapted.merge_and_unload()
        after = merged(x)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-5)


def test_freeze_and_param_groups():
    model = stcnnt_dsl.build(SPEC, seed=0)
    assert freeze(model, "encoder.*", "bridge") == ["encoder.0", "encoder.1", "bridge"]
    assert not any(p.requires_grad for p in model.backbone.encoder.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    with pytest.raises(STCNNTError, match="matches no stage"):
        freeze(model, "encoders.*")
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    names = {n for g in groups for n in g["names"]}
    assert not any(n.startswith("backbone.encoder.") for n in names)  # frozen: left out
    no_decay = model.no_weight_decay()
    for group in groups:
        assert all((n in no_decay) == (group["weight_decay"] == 0) for n in group["names"])
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["heads.seg.conv.weight"] == 1e-3
    assert (
        lr["backbone.decoder.0.cells.0.attn.qkv.weight"]
        > lr["backbone.decoder.1.cells.0.attn.qkv.weight"]
    )  # later stages learn faster


def test_lora_without_peft_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft":
            raise ImportError("no module named peft")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(STCNNTError, match=r"stcnnt-dsl\[adapt\]"):
        apply_lora(stcnnt_dsl.build(SPEC), object())


# --------------------------------------------------------------------------- issue 23


def test_a_whole_models_file_fills_a_backbone_when_the_part_is_named(tmp_path):
    """part='backbone' takes the file's backbone and nothing else (its heads are not the
    part's: no error); without a part, strict loading says to name it; strict=False
    loads the backbone and reports the heads' tensors as without a place."""
    donor = stcnnt_dsl.build(SPEC, seed=3)
    path = stcnnt_dsl.save_model(donor, tmp_path / "whole.safetensors")
    backbone = stcnnt_dsl.build({k: v for k, v in SPEC.items() if k != "heads"}, seed=0)
    report = load_weights(backbone, path, part="backbone")
    assert len(report.loaded) == len(backbone.state_dict()) and not report.unexpected
    for name, value in donor.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name
    with pytest.raises(WeightsError, match=r"holds a whole model.*part='backbone'"):
        load_weights(backbone, path)
    report = load_weights(backbone, path, strict=False)
    assert len(report.loaded) == len(backbone.state_dict())
    assert report.unexpected and all(k.startswith("heads.") for k in report.unexpected)


def test_reference_keys_without_a_place_are_reported(tmp_path):
    """A reference checkpoint whose head this model does not have (e.g. UperNet's `post.*`
    tensors): strict=False reports them as unexpected, strict refuses the file."""
    from safetensors.torch import save_file

    from stcnnt_dsl.compat.weights import _reference_names

    backbone = stcnnt_dsl.build({k: v for k, v in SPEC.items() if k != "heads"}, seed=2)
    names, _ = _reference_names(backbone)
    state = backbone.state_dict()
    weights = {}
    for key, refs in names.items():
        for ref, part in zip(refs, state[key].chunk(len(refs)), strict=True):
            weights["backbone." + ref] = part.contiguous()
    weights["post.fpn.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "reference-whole.safetensors"
    save_file(weights, str(path))
    fresh = stcnnt_dsl.build({k: v for k, v in SPEC.items() if k != "heads"}, seed=0)
    report = load_weights(fresh, path, strict=False)
    assert report.unexpected == ["post.fpn.0.weight"]
    assert len(report.loaded) == len(state)
    for name, value in state.items():
        assert torch.equal(fresh.state_dict()[name], value), name
    with pytest.raises(WeightsError, match=r"'post\.fpn\.0\.weight' has no place"):
        load_weights(fresh, path)
    assert not load_weights(fresh, path, part="backbone").unexpected  # a part was named


def test_a_load_report_prints_as_a_summary(tmp_path):
    backbone = stcnnt_dsl.build({k: v for k, v in SPEC.items() if k != "heads"}, seed=1)
    path = stcnnt_dsl.save_model(backbone, tmp_path / "backbone.safetensors")
    report = load_weights(stcnnt_dsl.build(SPEC, seed=0), path, strict=False)
    text = str(report)
    assert text.startswith(f"loaded {len(report.loaded)} tensors")
    assert f"missing from the file: {len(report.missing)}" in text
    assert len(text) < 400 and text.count("heads.") <= 3  # not every key


def test_lora_targets_of_an_adapted_model_are_the_adapted_layers():
    peft = pytest.importorskip("peft")
    model = stcnnt_dsl.build(SPEC, seed=0)
    targets = lora_targets(model)
    adapted = apply_lora(model, peft.LoraConfig(r=2, target_modules=targets))
    assert lora_targets(adapted) == targets
