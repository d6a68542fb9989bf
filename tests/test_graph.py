"""Diagrams: DOT source for every topology and detail, SVG with Graphviz, DOT fallback."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import stcnnt_dsl
from stcnnt_dsl.errors import ShapeError, STCNNTError
from stcnnt_dsl.graph import build_graph
from stcnnt_dsl.tools.diagram import GraphvizMissingWarning, render_graph, to_dot

HAS_DOT = shutil.which("dot") is not None


@pytest.mark.parametrize("detail", ["stage", "cell"])
@pytest.mark.parametrize("arch", stcnnt_dsl.list_architectures())
def test_dot_source_shows_every_stage(arch, detail):
    source = to_dot(arch, detail=detail)
    assert source.startswith("digraph stcnnt {") and source.rstrip().endswith("}")
    plan = build_graph(arch)
    for stage in plan.stages:
        assert f'"{stage.name}' in source
        assert str(stage.plan.block) in source
        if detail == "cell":
            assert f'"cluster_{stage.name.replace(".", "_")}"' in source
            assert f'"{stage.name}.cells.{len(stage.plan.block) - 1}"' in source
    assert '"input"' in source and '"output"' in source
    if HAS_DOT:  # the source is valid DOT
        subprocess.run(["dot", "-Tcanon"], input=source, text=True, check=True,
                       capture_output=True)  # fmt: skip


def test_unet_diagram_has_gates_skips_and_resampling():
    source = to_dot("unet")
    assert source.count("attention\\ngate") == 3
    assert source.count('label="skip"') == 3
    assert "patch merge" in source and "bilinear + 3x3 conv" in source
    assert "rank=same" in source  # encoder and decoder of a level side by side
    no_gate = to_dot("unet(channels=[8, 16], blocks=L1, gate=false, down=interpolate)")
    assert "gate" not in no_gate.replace("gate=false", "") and "2x2 mean" in no_gate


def test_hrnet_and_llm_diagrams_show_their_wiring():
    hrnet = to_dot("hrnet")
    assert all(f'"sum:level{k}.output"' in hrnet for k in range(3))  # the fusion sums
    assert "down x4" in hrnet and "up x4" in hrnet and '"cat:output"' in hrnet
    llm = to_dot("llm")
    assert '"sum:blocks.2"' in llm  # block 2 takes the sum of blocks 0 and 1
    assert '"blocks.0" -> "sum:blocks.2"' in llm
    plain = to_dot("llm(channels=8, blocks=[L1, L1, L1], dense_skips=false)")
    assert '"sum:blocks.2"' not in plain


def test_cell_detail_shows_options_and_dense_connections():
    source = to_dot(
        "llm(channels=32, blocks=L1[window=4] G0 T1[causal=true], dense=true)", detail="cell"
    )
    assert "window 4, patch 2" in source
    assert "G0  global\\n" in source  # no mixer
    assert "causal" in source
    assert "heads 4" in source  # auto: 32 channels x 2x2 patch / 32 per head
    assert source.count("style=dashed, color=gray40") == 1  # cell 0 -> cell 2


def test_input_shape_labels_and_errors():
    source = to_dot("unet", input_shape=(1, 8, 1, 128, 128))
    assert "1x8x1x128x128" in source and "128 x 16 x 16 (T=8)" in source
    with pytest.raises(ShapeError):
        to_dot("unet", input_shape=(1, 8, 1, 100, 128))
    with pytest.raises(STCNNTError, match="detail"):
        to_dot("unet", detail="everything")


def test_a_built_model_can_be_drawn():
    model = stcnnt_dsl.build("unet-2d-small")
    assert to_dot(model) == to_dot("unet-2d-small")


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("arch", ["unet", "hrnet", "llm"])
def test_renders_svg_with_graphviz(arch, tmp_path):
    path = render_graph(arch, tmp_path / f"{arch}.svg")
    assert path == tmp_path / f"{arch}.svg"
    text = path.read_text()
    assert "<svg" in text
    assert build_graph(arch).stages[0].name in text


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed")
def test_renders_png_and_pdf(tmp_path):
    png = render_graph("unet-2d-small", tmp_path / "g.png", detail="cell")
    assert png.read_bytes().startswith(b"\x89PNG")
    pdf = render_graph("unet-2d-small", tmp_path / "g.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")


def test_without_dot_writes_the_source_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(GraphvizMissingWarning, match="apt-get install graphviz"):
        path = render_graph("unet", tmp_path / "unet.svg")
    assert path == tmp_path / "unet.dot"
    assert not (tmp_path / "unet.svg").exists()
    assert path.read_text() == to_dot("unet")


def test_dot_suffix_writes_source_and_bad_suffixes_fail(tmp_path):
    path = render_graph("llm", tmp_path / "llm.gv")
    assert path.read_text().startswith("digraph")
    with pytest.raises(STCNNTError, match=r"\.svg, \.png"):
        render_graph("llm", tmp_path / "llm.jpeg")
    with pytest.raises(STCNNTError, match="does not exist"):
        render_graph("llm", tmp_path / "missing" / "llm.svg")
