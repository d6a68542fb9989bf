"""MONAI in practice: backbones built with layout="BCHW" (2D) and "BCHWD" (3D, slices
last) run under `sliding_window_inference`, and examples/monai_train.py trains with
MONAI transforms and DiceLoss. The library itself never imports MONAI."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stcnnt_dsl

monai = pytest.importorskip("monai", reason="MONAI is not installed (the [monai] extra)")
from monai.inferers import sliding_window_inference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "monai_train.py"
# Small on purpose; both need H, W multiples of 16 (any number of slices).
SPEC_2D = "unet(channels=[4, 8], blocks=L1G1, heads=1, defaults={window=4, patch=2})"
SPEC_3D = (
    "unet(channels=[4, 8], blocks=C3T1L1G1, heads=1, defaults={window=4, patch=2, norm=instance3d})"
)


def _model(spec: str, layout: str) -> torch.nn.Module:
    return stcnnt_dsl.build(spec, layout=layout, seed=0).eval()


def _infer(model, x, roi, **kw) -> torch.Tensor:
    with torch.no_grad():
        return sliding_window_inference(x, roi_size=roi, sw_batch_size=4, predictor=model, **kw)


@pytest.mark.parametrize(
    ("spec", "layout", "shape"),
    [(SPEC_2D, "BCHW", (2, 1, 32, 48)), (SPEC_3D, "BCHWD", (2, 1, 32, 48, 5))],
    ids=["2d", "3d"],
)
def test_one_window_over_the_whole_image_is_a_direct_forward(spec, layout, shape):
    model = _model(spec, layout)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    got = _infer(model, x, roi=shape[2:])
    with torch.no_grad():
        want = model(x)
    assert got.shape == want.shape == (shape[0], model.out_channels, *shape[2:])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("spec", "layout", "shape", "roi", "alone"),
    [
        (SPEC_2D, "BCHW", (1, 1, 48, 64), (32, 32), (16, 16)),
        (SPEC_3D, "BCHWD", (1, 1, 48, 48, 8), (32, 32, 4), (16, 16, 2)),
    ],
    ids=["2d", "3d"],
)
def test_overlapping_tiles_blend_into_the_image(spec, layout, shape, roi, alone):
    """Tiles of half-overlap start every roi/2 pixels (slices); the corner `alone` is
    covered by the first tile only, so there the blend is that tile's prediction."""
    model = _model(spec, layout)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = _infer(model, x, roi=roi, overlap=0.5, mode="gaussian")
    assert out.shape == (shape[0], model.out_channels, *shape[2:])
    assert torch.isfinite(out).all()
    corner = (..., *(slice(0, n) for n in alone))
    with torch.no_grad():
        first_tile = model(x[(..., *(slice(0, n) for n in roi))])
    torch.testing.assert_close(out[corner], first_tile[corner])
    # elsewhere tiles overlap and the blend is not any single tile's output
    assert not torch.allclose(out[(..., *(slice(0, n) for n in roi))], first_tile)


def test_monai_example_trains(capsys):
    example = runpy.run_path(str(EXAMPLE))
    result = example["main"](["--steps", "16", "--batch", "4", "--log-every", "8",
                              "--val-size", "32", "--val-images", "2"])  # fmt: skip
    losses = result["losses"]
    assert len(losses) == 16
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # the Dice loss goes down
    assert 0.0 <= result["dice"] <= 1.0
    printed = capsys.readouterr().out
    assert "step 16/16  Dice loss" in printed and "validation Dice" in printed


def test_monai_example_without_monai_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "monai", None)  # `import monai` now fails
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(EXAMPLE))
    message = str(exit_.value.code)
    assert 'pip install "stcnnt-dsl[monai]"' in message
    assert "stcnnt-dsl itself does not" in message


def test_only_the_applications_import_monai():
    """The core (language, graph, layers, models, tools) never imports MONAI; the data,
    training and studio layers use it (extras [data] and [train]), and only where they
    run, so `import stcnnt_dsl` and the architecture tools start without it."""
    package = Path(stcnnt_dsl.__file__).parent
    importers = [
        p.relative_to(package).parts[0]
        for p in package.rglob("*.py")
        if any(line.lstrip().startswith(("import monai", "from monai")) for line in p.open())
    ]
    assert set(importers) <= {"data", "train", "studio"}, importers
    code = "import sys, stcnnt_dsl; stcnnt_dsl.check('unet', (1, 2, 1, 64, 64)); "
    code += "sys.exit(1 if 'monai' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
