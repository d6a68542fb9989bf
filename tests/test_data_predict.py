"""Prediction, evaluation and the data commands: the real files pydicom and nibabel ship
read, predicted with a small model, written back with their geometry; the sliding
window against MONAI's own call; the metrics against numpy; the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel", reason="the data extra is not installed")
pytest.importorskip("pydicom", reason="the data extra is not installed")
pytest.importorskip("monai", reason="the data extra is not installed")

import stcnnt_dsl  # noqa: E402
from stcnnt_dsl.cli import main  # noqa: E402
from stcnnt_dsl.data import open_dataset, read_image, write_image  # noqa: E402
from stcnnt_dsl.data.evaluate import evaluate  # noqa: E402
from stcnnt_dsl.data.predict import (  # noqa: E402
    normalize,
    predict_image,
    sliding_window,
    valid_patch,
)
from stcnnt_dsl.errors import DataError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data import real  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_dataset import make_dataset  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = "heads={seg={kind=segmentation, classes=3}}"
MODEL_3D = f"unet(channels=[4,8], blocks=T1L1, window=4, patch=2, {HEADS})"  # mixes along T
MODEL_2D = f"unet(channels=[4,8], blocks=L1, window=4, patch=2, {HEADS})"


def _model(spec: str, channels: int = 1) -> torch.nn.Module:
    return stcnnt_dsl.build(spec, in_channels=channels, seed=0).eval()


# file, model, window limit (T, H, W): small windows keep the large files quick
PREDICTED = [
    ("CT_small.dcm", MODEL_2D, None),
    ("MR_small.dcm", MODEL_2D, None),
    ("rtdose.dcm", MODEL_3D, None),
    ("anatomical.nii", MODEL_3D, None),
    ("functional.nii", MODEL_3D, None),
    pytest.param("example4d.nii.gz", MODEL_3D, (8, 64, 64), marks=pytest.mark.slow),
    pytest.param("examples_ybr_color.dcm", MODEL_3D, (8, 64, 64), marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "spec", "limit"), PREDICTED)
def test_real_files_predict_and_write_back_with_their_geometry(name, spec, limit, tmp_path):
    image = read_image(real(name))
    t, c, h, w = image.shape
    model = _model(spec, c)
    patch = valid_patch(model, (t, h, w), limit=limit)
    outputs = predict_image(model, image, patch=patch, overlap=0.25)
    label = outputs["seg"].array
    assert label.shape == (t, 1, h, w) and label.dtype == np.int64
    assert outputs["seg"].probabilities.shape == (t, 3, h, w)
    np.testing.assert_allclose(outputs["seg"].probabilities.sum(1), 1.0, atol=1e-5)
    out = write_image(image, label, tmp_path / real(name).name)
    back = read_image(out)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-5)
    np.testing.assert_allclose(back.spacing, image.spacing, rtol=1e-6)
    assert (back.shape[0], back.shape[2], back.shape[3]) == (t, h, w)
    np.testing.assert_array_equal(back.array, label)


def test_valid_patch_follows_the_graphs_size_rule():
    model = _model(MODEL_3D)
    rule = model.graph.rule()
    assert rule.multiple == (16, 16)
    assert valid_patch(model, (7, 45, 43)) == (7, 48, 48)  # rounded up: padded by MONAI
    assert valid_patch(model, (100, 300, 500)) == (32, 128, 128)  # tiled
    assert valid_patch(model, (3, 5, 200), limit=(2, 40, 40)) == (2, 16, 32)
    graph = stcnnt_dsl.build_graph("unet(channels=[8,16,32], blocks=L1G1, window=[4, 6])")
    patch = valid_patch(graph, (4, 100, 100))
    assert patch[1] % graph.rule().multiple[0] == 0 and patch[2] % graph.rule().multiple[1] == 0
    graph.check(*patch)


def test_sliding_window_equals_monais_own_call_on_the_same_weights():
    """Our plumbing (normalise, [T, C, H, W] <-> MONAI's [C, D, H, W], heads) against
    MONAI's sliding_window_inference called directly on the same weights built in
    MONAI's layout (BCHWD: slices last)."""
    monai = pytest.importorskip("monai.inferers")
    rng = np.random.default_rng(0)
    array = rng.normal(size=(6, 1, 21, 37)).astype(np.float32)
    model = _model(MODEL_3D)
    ours = sliding_window(model, normalize(array), (4, 16, 32), heads=["seg"], overlap=0.5)["seg"]
    twin = stcnnt_dsl.build(MODEL_3D, seed=0, layout="BCHWD").eval()
    twin.load_state_dict(model.state_dict())
    x = torch.from_numpy(normalize(array)).permute(1, 2, 3, 0)[None]  # [1, C, H, W, D]
    with torch.inference_mode():
        theirs = monai.sliding_window_inference(
            x, (16, 32, 4), 1, lambda v: twin(v)["seg"], overlap=0.5, mode="gaussian"
        )[0].permute(0, 3, 1, 2)  # [K, D, H, W] -> [K, T, H, W]
    assert ours.shape == (3, 6, 21, 37)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_normalize_matches_its_definition():
    rng = np.random.default_rng(1)
    array = rng.normal(5, 3, size=(4, 2, 8, 8)).astype(np.float32)
    z = normalize(array, "zscore")
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)
    p = normalize(array, "percentile")
    assert p.min() >= -1e-6 and p.max() <= 1 + 1e-6
    np.testing.assert_array_equal(normalize(array, "none"), array)


def _dice(pred: np.ndarray, label: np.ndarray, k: int) -> float:
    a, b = pred == k, label == k
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_evaluate_scores_match_numpy(tmp_path):
    root = make_dataset(tmp_path / "ds", kind="3d", cases=2, seed=0, size=(33, 37), frames=(4, 5))
    model = _model(MODEL_3D)
    stcnnt_dsl.save_model(model, tmp_path / "m.safetensors")
    report = evaluate(tmp_path / "m.safetensors", root)
    ds = open_dataset(root)
    for i, row in enumerate(report["per_case"]):
        image, label = ds.load(i)
        pred = predict_image(model, image)["seg"].array
        for k, name in ((1, "bright"), (2, "dark")):
            want = _dice(pred, label, k)
            assert row["seg"]["dice_per_class"][name] == pytest.approx(want, abs=1e-5)
        assert row["seg"]["hd95"] is None or row["seg"]["hd95"] > 0
    assert report["dice"] == pytest.approx(
        np.mean([r["seg"]["dice"] for r in report["per_case"]]), abs=1e-5
    )


def test_cli_inspect_evaluate_predict(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", kind="2d+t", cases=2, seed=2, size=(33, 37), frames=(4, 5))
    assert main(["data", "inspect", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["cases"] == 2 and doc["channels"] == ["MR"]
    assert doc["shape"]["min"][1] >= 33 and doc["spacing"]["median"] == [40.0, 1.2, 1.2]

    heads = "heads={seg={kind=segmentation, classes=3}, den={kind=enhancement, out_channels=1}}"
    model = stcnnt_dsl.build(f"unet(channels=[4,8], blocks=T1L1, window=4, patch=2, {heads})",
                             seed=0)  # fmt: skip
    checkpoint = tmp_path / "m.safetensors"
    stcnnt_dsl.save_model(model, checkpoint)
    assert main(["evaluate", str(checkpoint), str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert 0 <= doc["dice"] <= 1 and doc["psnr"] > 0 and set(doc["heads"]) == {"seg", "den"}

    inputs = sorted(str(p) for p in (root / "imagesTr").iterdir())
    out = tmp_path / "pred"
    assert main(["predict", str(checkpoint), *inputs, "--out", str(out), "--probabilities"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"case_00{i}_0000_{kind}.nii.gz" for i in range(2)
        for kind in ("seg", "den", "seg_probabilities")
    )  # fmt: skip
    for i in range(2):
        source = read_image(inputs[i])
        for kind in ("seg", "den"):
            back = read_image(out / f"case_00{i}_0000_{kind}.nii.gz")
            np.testing.assert_allclose(back.affine, source.affine)
            assert back.spacing == source.spacing and back.shape == source.shape
    capsys.readouterr()
    assert main(["predict", str(checkpoint), inputs[0], "--out", str(out)]) == 2
    assert "already holds predictions" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), inputs[0], "--out", str(out), "--overwrite"]) == 0


def test_predict_writes_a_classification_csv(tmp_path, capsys):
    root = make_dataset(tmp_path / "c", kind="classify", cases=2, seed=0, size=(33, 37),
                        frames=(4, 5))  # fmt: skip
    model = stcnnt_dsl.build("unet(channels=[4,8], blocks=T1L1, window=4, patch=2, "
                             "heads={cls={kind=classification, classes=2}})", seed=0)  # fmt: skip
    stcnnt_dsl.save_model(model, tmp_path / "m.safetensors")
    files = sorted(str(p) for p in root.glob("*/*.nii.gz"))
    assert main(["predict", str(tmp_path / "m.safetensors"), *files, "--out",
                 str(tmp_path / "out"), "--json"]) == 0  # fmt: skip
    lines = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "file,head,class,p0,p1" and len(lines) == 3
    for line in lines[1:]:
        p0, p1 = (float(v) for v in line.split(",")[3:])
        assert p0 + p1 == pytest.approx(1.0, abs=1e-5)


def test_a_backbone_without_heads_is_refused(tmp_path):
    stcnnt_dsl.save_model(
        stcnnt_dsl.build(MODEL_3D.split(", heads")[0] + ")"), tmp_path / "b.safetensors"
    )
    with pytest.raises(DataError, match="backbone without heads"):
        evaluate(tmp_path / "b.safetensors", tmp_path)
