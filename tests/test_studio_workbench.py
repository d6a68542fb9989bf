"""The studio's data, training, prediction and export API (issue 27): the folders it may
touch, the images it renders, the runs it starts, and the errors it shows."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the studio extra (fastapi) is not installed")
from fastapi.testclient import TestClient

from stcnnt_dsl.errors import STCNNTError
from stcnnt_dsl.studio.app import create_app
from stcnnt_dsl.studio.data_view import png_gray, png_label
from stcnnt_dsl.studio.folders import Folder, OutsideFolderError, run_name
from stcnnt_dsl.studio.runs import read_metrics

HOST = {"host": "127.0.0.1:8765"}


def client(**kwargs) -> TestClient:
    return TestClient(create_app(**kwargs), base_url="http://127.0.0.1:8765")


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


# --------------------------------------------------------------------------- folders


def test_folder_refuses_paths_that_leave_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.nii.gz").write_bytes(b"x")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "link-out").symlink_to(outside)
    (root / "dir-out").symlink_to(tmp_path)
    (root / "link-in").symlink_to(root / "sub" / "a.nii.gz")
    folder = Folder(root, what="--data")
    assert folder.inside("sub", "a.nii.gz") == (root / "sub" / "a.nii.gz").resolve()
    assert folder.inside("link-in") == (root / "sub" / "a.nii.gz").resolve()
    for bad in ("../secret.txt", "sub/../../secret.txt", str(outside), "/etc/passwd",
                "link-out", "dir-out/secret.txt", "a\x00b"):  # fmt: skip
        with pytest.raises(OutsideFolderError, match=r"outside the folder given with --data|NUL"):
            folder.inside(bad)
    assert not folder.contains("../secret.txt")


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/abs", "", "-x", "a" * 65, "a\\b"])
def test_run_names_are_one_plain_folder_name(name: str) -> None:
    with pytest.raises(STCNNTError, match="a run name is"):
        run_name(name)
    assert run_name("run-20260101.2_a") == "run-20260101.2_a"


# --------------------------------------------------------------------------- rendering


def test_gray_png_applies_the_window() -> None:
    frame = np.array([[-10.0, 0.0], [50.0, 200.0]], dtype=np.float32)
    image = _decode(png_gray(frame, 0.0, 100.0))
    assert image.dtype == np.uint8 and image.shape == (2, 2)
    assert image.tolist() == [[0, 0], [127, 255]]


def test_label_png_colours_classes_and_leaves_background_clear() -> None:
    label = np.array([[0, 1], [2, 1]], dtype=np.int64)
    rgba = _decode(png_label(label))
    assert rgba.shape == (2, 2, 4)
    assert rgba[0, 0, 3] == 0 and (rgba[[0, 1, 1], [1, 0, 1], 3] == 255).all()
    assert (rgba[0, 1] == rgba[1, 1]).all() and not (rgba[0, 1] == rgba[1, 0]).all()


def test_metrics_csv_is_read_as_numbers_without_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,val_dice\n1,0.9,\n2,0.5,0.25\n3,0.4")
    assert read_metrics(path) == {
        "columns": ["step", "loss", "val_dice"],
        "rows": [[1.0, 0.9, None], [2.0, 0.5, 0.25]],
    }
    assert read_metrics(tmp_path / "none.csv") == {"columns": [], "rows": []}


# --------------------------------------------------------------------------- the API's guards


def test_new_routes_keep_the_host_and_origin_checks_and_the_body_limit(tmp_path: Path) -> None:
    c = client(runs=str(tmp_path / "runs"))
    assert c.get("/api/runs", headers={"host": "evil.example"}).status_code == 403
    answer = c.post("/api/runs", json={}, headers={"origin": "http://evil.example"})
    assert answer.status_code == 403
    big = {"spec": "x" * (2 << 20)}
    assert c.post("/api/runs", json=big).status_code == 413
    assert not (tmp_path / "runs").exists()  # nothing was written for any of them


@pytest.mark.parametrize("name", ["..", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "a%00b"])
def test_run_routes_refuse_names_that_are_paths(tmp_path: Path, name: str) -> None:
    (tmp_path / "secret").mkdir()
    c = client(runs=str(tmp_path / "runs"))
    for url in (f"/api/runs/{name}", f"/api/runs/{name}/model.safetensors",
                f"/api/runs/{name}/model.onnx"):  # fmt: skip
        answer = c.get(url)
        assert answer.status_code in (400, 404), url
        assert "secret" not in answer.text


def test_without_data_the_page_says_how_to_give_it() -> None:
    document = client().get("/api/data").json()
    assert document["ok"] is False
    assert "--data DIR" in document["error"]["message"]
    runs = client().get("/api/runs").json()
    assert runs["runs"] == [] and "--runs DIR" in runs["error"]["message"]
    answer = client().post("/api/runs", json={})
    assert answer.status_code == 400 and "--runs DIR" in answer.json()["error"]["message"]


def test_a_folder_that_is_not_a_data_set_is_a_message(tmp_path: Path) -> None:
    pytest.importorskip("nibabel", reason="the data extra is not installed")
    (tmp_path / "notes.txt").write_text("not images")
    document = client(data=str(tmp_path)).get("/api/data").json()
    assert document["ok"] is False and document["error"]["message"]
    assert "Traceback" not in document["error"]["message"]
    assert os.listdir(tmp_path) == ["notes.txt"]  # read only


# --------------------------------------------------------------------------- with a data set


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    pytest.importorskip("nibabel", reason="the data extra is not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_dataset import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Shapes", kind="2d+t")


def test_cases_and_frames_come_from_the_data_layer(shapes: Path, tmp_path: Path) -> None:
    from stcnnt_dsl.data import open_dataset

    c = client(data=str(shapes), runs=str(tmp_path / "runs"))
    summary = c.get("/api/data").json()
    dataset = open_dataset(shapes)
    assert summary["ok"] and summary["fingerprint"] == dataset.fingerprint()
    assert [case["name"] for case in summary["cases"]] == [case.name for case in dataset.cases]
    image, label = dataset.load(3)
    meta = c.get("/api/data/cases/3").json()
    assert meta["shape"] == list(image.array.shape) and meta["values"] == [1, 2]
    t = image.array.shape[0] - 1
    window = meta["windows"][0]
    png = c.get(f"/api/data/cases/3/image/{t}.png?low={window['min']}&high={window['max']}")
    assert png.headers["content-type"] == "image/png"
    frame = image.array[t, 0]
    expected = np.clip((frame - window["min"]) * 255 / (window["max"] - window["min"]), 0, 255)
    assert np.abs(_decode(png.content).astype(float) - expected.astype(np.uint8)).max() <= 1
    overlay = _decode(c.get(f"/api/data/cases/3/label/{t}.png").content)
    assert ((overlay[..., 3] > 0) == (label[t, 0] > 0)).all()
    for bad in ("/api/data/cases/99", f"/api/data/cases/3/image/{t + 1}.png",
                "/api/data/cases/3/image/0.png?c=1", "/api/data/cases/-1/label/0.png"):  # fmt: skip
        answer = c.get(bad)
        assert answer.status_code == 400 and answer.json()["error"]["message"], bad


def test_a_data_set_listing_files_outside_its_folder_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("nibabel", reason="the data extra is not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_dataset import make_dataset

    outside = make_dataset(tmp_path / "outside", kind="2d+t", cases=2)
    root = tmp_path / "data"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("case_000_0000.nii.gz", "case_001_0000.nii.gz"):
        (root / "imagesTr" / name).symlink_to(outside / "imagesTr" / name)
    for name in ("case_000.nii.gz", "case_001.nii.gz"):
        (root / "labelsTr" / name).symlink_to(outside / "labelsTr" / name)
    shutil.copy(outside / "dataset.json", root / "dataset.json")
    document = client(data=str(root), runs=str(tmp_path / "runs")).get("/api/data").json()
    assert document["ok"] is False
    assert "outside the folder given with --data" in document["error"]["message"]


def test_a_spec_over_the_memory_budget_is_refused_before_anything_starts(
    shapes: Path, tmp_path: Path
) -> None:
    c = client(data=str(shapes), runs=str(tmp_path / "runs"))
    big = "unet(channels=[64, 128], blocks=T1L1G1, window=4, patch=2)"
    answer = c.post("/api/runs", json={"spec": big, "memory": "16MiB"})
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "memory 16 MiB is too small" in message and "needs" in message
    bad = c.post("/api/runs", json={"memory": "lots"}).json()["error"]["message"]
    assert "is not a budget" in bad
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
