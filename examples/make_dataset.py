"""A synthetic imaging data set on disk, in nnU-Net v2's raw layout, for the examples and
tests: nothing is downloaded, everything comes from a seed.

    from make_dataset import make_dataset        # with examples/ on sys.path
    root = make_dataset("data/Dataset001_Shapes", kind="3d", cases=6, seed=0)
    # root/dataset.json, root/imagesTr/case_000_0000.nii.gz, root/labelsTr/case_000.nii.gz

Kinds:

- `"3d"`: volumes of odd sizes (H, W, slices), anisotropic spacing, with a bright
  ellipsoid (label 1) and a darker box (label 2) on a noisy background;
- `"2d+t"`: cine clips stored as NIfTI `(H, W, 1, T)` (so T reads as time), with a disc
  (label 1) that moves in a straight line and a still square (label 2);
- `"classify"`: a plain folder with one sub-folder per class (`right`, `down`): 2D+T clips
  of one disc moving that way (only the frames tell the class apart);
- `"png"`: a plain folder of 8-bit PNG images (T = 1), one sub-folder per class: a filled
  `disc` or a `ring` (the same outer radius, hollow inside), at a random place and size on
  noise; the images are `size[0]` pixels square. The classes differ in shape, not in
  brightness or size. (A disc against a square of about the same area, tried first, was
  too fine a cue: the recipe's small model stayed at chance on held-out images.)

Intensities are stored as uint16 (a scanner's range, e.g. 900..3500), sizes are odd
(no multiple of 16; PNGs: 8-bit, `size[0]` square), so the files need the same scaling and
valid-size handling as real data. Run it as a script to write one:
`python examples/make_dataset.py DIR --kind 3d`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["KINDS", "make_dataset"]

KINDS = ("3d", "2d+t", "classify", "png")
_LABELS = {"background": 0, "bright": 1, "dark": 2}


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return 1000.0 + 120.0 * rng.standard_normal(shape)


def _uint16(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16)


def _volume(rng: np.random.Generator, size: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """(image, label) of shape (H, W, D)."""
    h, w, d = size
    y, x, z = np.meshgrid(np.arange(h), np.arange(w), np.arange(d), indexing="ij")
    centre = rng.uniform([0.35, 0.35, 0.35], [0.65, 0.65, 0.65]) * (h, w, d)
    radii = rng.uniform([0.15, 0.15, 0.2], [0.25, 0.25, 0.3]) * (h, w, d)
    inside = (((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2
              + ((z - centre[2]) / radii[2]) ** 2) <= 1  # fmt: skip
    label = inside.astype(np.uint8)
    corner = rng.integers([1, 1, 0], [h // 4, w // 4, max(1, d // 4)])
    extent = rng.integers([4, 4, 2], [h // 4 + 5, w // 4 + 5, max(3, d // 3)])
    box = tuple(slice(c, c + e) for c, e in zip(corner, extent, strict=True))
    label[box] = np.where(label[box] == 0, 2, label[box])
    image = _noise(rng, size) + 2000.0 * (label == 1) + 700.0 * (label == 2)
    return _uint16(image), label


def _clip(
    rng: np.random.Generator, size: tuple[int, int, int], direction: tuple[float, float]
) -> tuple[np.ndarray, ...]:
    """(image, label) of shape (H, W, 1, T): a moving disc and a still square."""
    h, w, t = size
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    radius = rng.uniform(0.12, 0.18) * min(h, w)
    speed = rng.uniform(1.0, 2.0)
    travel = speed * (t - 1)
    start = [rng.uniform(radius + 1, n - radius - 1 - travel * abs(s)) if s > 0 else
             rng.uniform(radius + 1 + travel * abs(s), n - radius - 1) if s < 0 else
             rng.uniform(radius + 1, n - radius - 1)
             for n, s in zip((h, w), direction, strict=True)]  # fmt: skip
    side = int(rng.integers(3, 6))
    sy, sx = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    label = np.zeros((h, w, 1, t), np.uint8)
    for f in range(t):
        cy, cx = (start[i] + direction[i] * speed * f for i in range(2))
        label[..., 0, f][(y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = 1
        label[sy : sy + side, sx : sx + side, 0, f] = 2
    image = _noise(rng, label.shape) + 2000.0 * (label == 1) + 700.0 * (label == 2)
    return _uint16(image), label


def _save(array: np.ndarray, affine: np.ndarray, path: Path, frame_ms: float = 0.0) -> None:
    img = nib.Nifti1Image(array, affine)
    if frame_ms:
        img.header.set_zooms((*img.header.get_zooms()[:3], frame_ms))
        img.header.set_xyzt_units("mm", "msec")
    nib.save(img, str(path))


def make_dataset(
    root: str | Path,
    *,
    kind: str = "3d",
    cases: int = 6,
    seed: int = 0,
    size: tuple[int, int] = (37, 45),
    frames: tuple[int, int] = (5, 9),
) -> Path:
    """Write a synthetic data set under `root` (created; must not hold one) and return it.

    `size` is the range of H and W (odd sizes are drawn from it), `frames` the range of T
    (slices for "3d", time frames otherwise). Same `seed`, same files.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    root = Path(root)
    if (root / "dataset.json").exists() or (root.is_dir() and any(root.iterdir())):
        raise FileExistsError(f"{root} already holds files; give a new folder")
    rng = np.random.default_rng(seed)
    if kind == "classify":
        return _classify(root, rng, cases, size, frames)
    if kind == "png":
        return _png(root, rng, cases, size[0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for i in range(cases):
        h, w = (int(rng.integers(size[0], size[1] + 1)) | 1 for _ in range(2))
        t = int(rng.integers(frames[0], frames[1] + 1))
        if kind == "3d":
            image, label = _volume(rng, (h, w, t))
            affine, frame_ms = np.diag([0.8, 0.8, 2.5, 1.0]), 0.0
        else:
            angle = rng.uniform(0, 2 * np.pi)
            image, label = _clip(rng, (h, w, t), (np.sin(angle), np.cos(angle)))
            affine, frame_ms = np.diag([1.2, 1.2, 8.0, 1.0]), 40.0
        _save(image, affine, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", frame_ms)
        _save(label, affine, root / "labelsTr" / f"case_{i:03d}.nii.gz", frame_ms)
    manifest = {
        "name": f"synthetic {kind}",
        "description": f"make_dataset(kind={kind!r}, cases={cases}, seed={seed})",
        "channel_names": {"0": "MR"},
        "labels": _LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def _classify(
    root: Path,
    rng: np.random.Generator,
    cases: int,
    size: tuple[int, int],
    frames: tuple[int, int],
) -> Path:
    directions = {"right": (0.0, 1.0), "down": (1.0, 0.0)}
    for name in directions:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        name = list(directions)[i % 2]
        h, w = (int(rng.integers(size[0], size[1] + 1)) | 1 for _ in range(2))
        t = int(rng.integers(frames[0], frames[1] + 1))
        image, _ = _clip(rng, (h, w, t), directions[name])
        _save(image, np.diag([1.2, 1.2, 8.0, 1.0]), root / name / f"clip_{i:03d}.nii.gz", 40.0)
    return root


def _png(root: Path, rng: np.random.Generator, cases: int, side: int) -> Path:
    from PIL import Image

    yy, xx = np.mgrid[:side, :side]
    for i in range(cases):
        name = ("disc", "ring")[i % 2]
        radius = rng.uniform(0.16, 0.28) * side
        cy, cx = rng.uniform(radius + 1, side - radius - 1, 2)
        distance = np.hypot(yy - cy, xx - cx)
        inside = distance <= radius
        if name == "ring":
            inside &= distance >= 0.55 * radius
        image = 60 + 120 * inside + rng.normal(0, 25, (side, side))
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the folder to write (must be new or empty)")
    parser.add_argument("--kind", choices=KINDS, default="3d")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs="+", default=[37, 45], metavar="N",
                        help="the range of H and W (png: the side), e.g. 37 45 or 32")  # fmt: skip
    args = parser.parse_args()
    size = (args.size[0], args.size[-1])
    root = make_dataset(args.root, kind=args.kind, cases=args.cases, seed=args.seed, size=size)
    print(f"wrote {root} ({args.kind}, {args.cases} cases)")


if __name__ == "__main__":
    main()
