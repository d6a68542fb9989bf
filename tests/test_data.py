"""stcnnt_dsl.data: real files that pydicom and nibabel ship (no one here wrote them) read
as [T, C, H, W] and written back with their geometry; the other formats; data sets in
the field's layouts and their fingerprint."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel", reason="the data extra is not installed")
pydicom = pytest.importorskip("pydicom", reason="the data extra is not installed")

from nibabel.testing import data_path  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from stcnnt_dsl.data import Image, open_dataset, read_image, write_image  # noqa: E402
from stcnnt_dsl.errors import DataError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_dataset import make_dataset  # noqa: E402


def real(name: str) -> Path:
    """A file shipped inside pydicom or nibabel (never downloaded)."""
    if name.endswith((".nii", ".nii.gz")):
        return Path(data_path) / name
    return Path(get_testdata_file(name, download=False))


# (file, [T, C, H, W] as read, what T holds); the NIfTI sizes are nibabel's headers with
# (i, j, k) -> (H, W, T); pydicom's files by their Rows, Columns and frames
REAL = [
    ("CT_small.dcm", (1, 1, 128, 128), "none"),
    ("MR_small.dcm", (1, 1, 64, 64), "none"),
    ("rtdose.dcm", (15, 1, 10, 10), "slices"),  # multi-frame, GridFrameOffsetVector
    ("examples_ybr_color.dcm", (30, 3, 240, 320), "time"),  # ultrasound cine, FrameTime
    ("anatomical.nii", (25, 1, 33, 41), "slices"),
    ("example4d.nii.gz", (24, 2, 128, 96), "slices"),  # 4D: the 2 volumes are channels
    ("functional.nii", (3, 20, 17, 21), "slices"),
]


@pytest.mark.parametrize(("name", "shape", "t_axis"), REAL, ids=[r[0] for r in REAL])
def test_real_files_read_and_write_back_with_their_geometry(name, shape, t_axis, tmp_path):
    image = read_image(real(name))
    assert image.array.dtype == np.float32
    assert image.shape == shape
    assert image.meta["t_axis"] == t_axis
    label = (image.array[:, :1] > np.median(image.array)).astype(np.int64)
    out = write_image(image, label, tmp_path / name)
    back = read_image(out)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-5)
    np.testing.assert_allclose(back.spacing, image.spacing, rtol=1e-6)
    assert back.shape == (shape[0], 1, shape[2], shape[3])
    np.testing.assert_array_equal(back.array, label)


def test_nifti_geometry_is_the_files_own():
    """Independent of our reader: nibabel's affine and zooms, and the voxel at (i, j, k)."""
    path = real("anatomical.nii")
    img = nib.load(str(path))
    image = read_image(path)
    np.testing.assert_array_equal(image.affine, img.affine)
    data = np.asanyarray(img.dataobj)
    assert image.array[7, 0, 3, 5] == data[3, 5, 7]
    zi, zj, zk = (float(z) for z in img.header.get_zooms())
    assert image.spacing == (zk, zi, zj)


def test_dicom_geometry_is_the_files_own():
    """Voxel (h, w) maps to ImagePositionPatient + h * column step + w * row step (LPS,
    turned to RAS by negating x and y)."""
    path = real("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    h, w = 10, 20
    lps = ipp + h * dr * iop[3:] + w * dc * iop[:3]
    ras = image.affine @ np.array([h, w, 0, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    np.testing.assert_array_equal(image.array[0, 0], ds.pixel_array * float(ds.RescaleSlope)
                                  + float(ds.RescaleIntercept))  # fmt: skip


def _series(folder: Path, positions: list[float], *, uid: str | None = None) -> list[Path]:
    """MR_small.dcm copied as a series whose slices lie at `positions` along z (file
    names in shuffled order, so only the positions can order them)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or pydicom.uid.generate_uid()
    files = []
    for i, z in enumerate(positions):
        ds = pydicom.dcmread(real("MR_small.dcm"))
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [-83.9063, -91.2, z]
        ds.InstanceNumber = i + 1
        ds.PixelData = (ds.pixel_array + i * 100).astype(ds.pixel_array.dtype).tobytes()
        path = folder / f"im{(7 * i) % len(positions):03d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


def test_dicom_series_folder_orders_slices_by_position(tmp_path):
    _series(tmp_path / "series", [10.0, 4.0, 7.0, 1.0])
    image = read_image(tmp_path / "series")
    assert image.shape == (4, 1, 64, 64)
    assert image.meta["t_axis"] == "slices"
    assert image.spacing[0] == pytest.approx(3.0)
    # slices ordered by z: 1, 4, 7, 10 were written with offsets 300, 100, 200, 0
    base = read_image(real("MR_small.dcm")).array[0, 0]
    offsets = [float(np.median(image.array[t, 0] - base)) for t in range(4)]
    assert offsets == [300, 100, 200, 0]
    # t steps +3 mm along z (RAS z = LPS z)
    np.testing.assert_allclose(image.affine[:3, 2], [0, 0, 3.0], atol=1e-6)
    out = write_image(image, (image.array > 500).astype(np.int64), tmp_path / "pred")
    back = read_image(out)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-6)
    assert back.meta["series_uid"] != image.meta["series_uid"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in image.path.iterdir())


def test_png_tiff_npy_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65535, (37, 45), dtype=np.uint16)
    PIL = pytest.importorskip("PIL.Image")
    PIL.fromarray(grey16).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (1, 1, 37, 45) and image.meta["dtype"] == "uint16"
    np.testing.assert_array_equal(image.array[0, 0], grey16)
    out = write_image(image, image.array, tmp_path / "b.png")  # enhancement: float -> uint16
    np.testing.assert_array_equal(read_image(out).array, image.array)

    tifffile = pytest.importorskip("tifffile")
    stack = rng.integers(0, 4000, (5, 33, 41), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    image = read_image(tmp_path / "s.tif")
    assert image.shape == (5, 1, 33, 41) and image.meta["t_axis"] == "slices"
    out = write_image(image, np.stack([image.array[:, 0]] * 2, 1), tmp_path / "p.tif")
    assert read_image(out).shape == (5, 2, 33, 41)
    assert read_image(tmp_path / "s.tif", t_axis="time").meta["t_axis"] == "time"

    np.save(tmp_path / "x.npy", stack)
    image = read_image(tmp_path / "x.npy")
    assert image.shape == (5, 1, 33, 41)
    out = write_image(image, stack.astype(np.int64), tmp_path / "y.npy")
    np.testing.assert_array_equal(np.load(out)[:, 0], stack)


def test_2dt_nifti_reads_time_as_t(tmp_path):
    data = np.arange(7 * 9 * 5, dtype=np.int16).reshape(7, 9, 1, 5)
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 6.0, 1.0]))
    img.header.set_zooms((1.5, 1.5, 6.0, 40.0))
    nib.save(img, tmp_path / "cine.nii.gz")
    image = read_image(tmp_path / "cine.nii.gz")
    assert image.shape == (5, 1, 7, 9) and image.meta["t_axis"] == "time"
    assert image.spacing == (40.0, 1.5, 1.5)
    np.testing.assert_array_equal(image.array[3, 0], data[:, :, 0, 3])
    out = write_image(image, image.array.astype(np.int64), tmp_path / "out.nii.gz")
    assert nib.load(out).shape == (7, 9, 1, 5)
    assert read_image(out).spacing == image.spacing


def test_write_is_atomic_and_checks_the_shape(tmp_path):
    image = read_image(real("MR_small.dcm"))
    with pytest.raises(DataError, match="T, H and W must match"):
        write_image(image, np.zeros((1, 1, 32, 32)), tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["3d", "2d+t", "classify"])
def test_synthetic_dataset_opens_and_fingerprints(kind, tmp_path):
    root = make_dataset(tmp_path / kind, kind=kind, cases=4, seed=1)
    ds = open_dataset(root)
    assert len(ds) == 4
    image, label = ds.load(0)
    t, c, h, w = image.shape
    assert c == 1 and h % 2 == 1 and w % 2 == 1 and image.meta["dtype"] == "uint16"
    assert image.meta["t_axis"] == ("slices" if kind == "3d" else "time")
    fp = ds.fingerprint()
    json.dumps(fp)  # JSON-able
    assert fp["cases"] == 4 and fp["layout"] == ("folder" if kind == "classify" else "nnunet")
    for key in ("channels", "classes", "task", "shape", "spacing", "intensity"):
        assert key in fp
    if kind == "classify":
        assert ds.task == "classify" and isinstance(label, int)
        assert fp["classes"] == {"down": 2, "right": 2}
        return
    assert ds.task == "segment" and label.shape == (t, 1, h, w) and label.dtype == np.int64
    assert set(fp["classes"]) == {"background", "bright", "dark"}
    assert sum(fp["classes"].values()) == pytest.approx(1.0, abs=1e-5)
    # intensities are sampled inside the labels: the objects (2000 and 700 above 1000)
    assert 2000 < fp["intensity"][0]["median"] < 3300
    shapes = np.array([ds.load(i)[0].shape for i in range(4)])[:, [0, 2, 3]]
    assert fp["shape"]["min"] == shapes.min(0).tolist()
    assert fp["shape"]["max"] == shapes.max(0).tolist()


def test_make_dataset_is_reproducible(tmp_path):
    a = make_dataset(tmp_path / "a", kind="2d+t", cases=2, seed=3)
    b = make_dataset(tmp_path / "b", kind="2d+t", cases=2, seed=3)
    for name in ("imagesTr/case_001_0000.nii.gz", "labelsTr/case_001.nii.gz"):
        np.testing.assert_array_equal(
            nib.load(a / name).get_fdata(), nib.load(b / name).get_fdata()
        )


def test_decathlon_datalist_and_csv_folder(tmp_path):
    root = make_dataset(tmp_path / "nn", kind="3d", cases=3, seed=0)
    cases = [{"image": f"./imagesTr/case_{i:03d}_0000.nii.gz",
              "label": f"./labelsTr/case_{i:03d}.nii.gz"} for i in range(3)]  # fmt: skip
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "bright", "2": "dark"},
        "training": cases,
    }))  # fmt: skip
    ds = open_dataset(root / "dataset.json")
    assert (ds.layout, ds.task, len(ds), ds.channels) == ("decathlon", "segment", 3, ["MRI"])
    assert ds.load(2)[1].max() >= 1

    folder = tmp_path / "csv"
    folder.mkdir()
    for i in range(4):
        shutil.copy(root / "imagesTr" / f"case_{i % 3:03d}_0000.nii.gz", folder / f"{i}.nii.gz")
    (folder / "labels.csv").write_text("file,label\n0.nii.gz,ill\n1.nii.gz,well\n"
                                       "2.nii.gz,ill\n3.nii.gz,well\n")  # fmt: skip
    ds = open_dataset(folder)
    assert (ds.layout, ds.task, ds.classes) == ("folder", "classify", {0: "ill", 1: "well"})
    assert [ds.load(i)[1] for i in range(4)] == [0, 1, 0, 1]


def test_progress_is_off_when_not_a_terminal(tmp_path, capfd):
    root = make_dataset(tmp_path / "d", kind="3d", cases=2, seed=0)
    open_dataset(root).fingerprint(quiet=False)
    assert capfd.readouterr().err == ""


def test_no_downloads(monkeypatch):
    """The real files come from the installed packages (pydicom's download=False)."""
    for name, _, _ in REAL:
        assert real(name).is_file(), name
        assert os.access(real(name), os.R_OK)
    assert isinstance(read_image(real("MR_small.dcm")), Image)
