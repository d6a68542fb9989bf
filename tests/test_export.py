"""`stcnnt_dsl.export` and `stcnnt export`: ONNX files that ONNX Runtime runs like PyTorch,
with dynamic B, T, H and W inside the architecture's valid sizes.

The fast tests export tiny architectures (tracing cost grows with the number of layers,
not with the input); every bundled architecture is exported in the slow tests.
"""

from __future__ import annotations

import collections
import json
import sys

import pytest
import torch
from conftest import forcing
from torch import nn

import stcnnt_dsl
from stcnnt_dsl import cli
from stcnnt_dsl.errors import ShapeError, STCNNTError
from stcnnt_dsl.nn.attention import SpatialAttention, TemporalAttention
from stcnnt_dsl.nn.functional import plain_ops
from stcnnt_dsl.nn.tuning import LAYOUTS

onnx = pytest.importorskip("onnx", reason="onnx is not installed (stcnnt-dsl[export])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (stcnnt-dsl[export])")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (stcnnt-dsl[export])")

pytestmark = pytest.mark.usefixtures("one_thread")

# T, L and G cells, patch merging, up-sampling and the gate; H and W multiples of 8.
TINY_UNET = "unet(channels=[4], blocks=[T1L1, G1], window=4, patch=2, grid=2)"
TINY_LLM = "llm(channels=4, blocks=[L1], window=4, patch=2)"
TOLERANCE = 1e-4  # max |ort - torch| / max |torch|


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _relative_error(got, want: torch.Tensor) -> float:
    return ((torch.from_numpy(got) - want).abs().max() / want.abs().max()).item()


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


TINY_UNET_LAYOUT = "nchw"  # the machine layout `tiny_unet` is built and exported on


def _export_tiny_unet(folder, layout: str):
    """TINY_UNET exported on a machine whose feature-map layout is `layout`."""
    with forcing(layout_infer=layout, layout_train=layout):
        model = stcnnt_dsl.build(TINY_UNET, seed=0).eval()
        x = torch.randn(1, 1, 1, 16, 16)
        with torch.no_grad():
            before = model(x)  # eager inference: the fused oneDNN path
        result = stcnnt_dsl.export(model, folder / f"tiny-{layout}.onnx", (1, 2, 1, 16, 16))
    return model, result, (x, before)


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    return _export_tiny_unet(tmp_path_factory.mktemp("export"), TINY_UNET_LAYOUT)


@pytest.fixture(scope="module", params=LAYOUTS)
def tiny_unet_on(request, tiny_unet, tmp_path_factory):
    """TINY_UNET exported on a machine of each layout (the graph must not depend on it)."""
    if request.param == TINY_UNET_LAYOUT:
        return tiny_unet
    return _export_tiny_unet(tmp_path_factory.mktemp("export"), request.param)


def test_the_file_has_one_named_input_and_output_with_dynamic_sizes(tiny_unet):
    _, result, _ = tiny_unet
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    assert [v.name for v in proto.graph.input] == ["input"]
    assert [v.name for v in proto.graph.output] == ["output"]
    assert _dims(proto.graph.input[0]) == ["batch", "frames", 1, "height", "width"]
    assert _dims(proto.graph.output[0]) == ["batch", "frames", 4, "height", "width"]
    assert result.inputs == {"input": ("batch", "frames", 1, "height", "width")}
    assert result.valid_sizes == "any B, H and W multiples of 8, any T"
    assert result.relative_error <= TOLERANCE


def test_the_file_says_which_sizes_it_accepts(tiny_unet):
    """In its metadata_props, for any ONNX tool (an input outside fails inside ONNX
    Runtime with a reshape error that names no rule)."""
    _, result, _ = tiny_unet
    session = _session(result.path)
    props = session.get_modelmeta().custom_metadata_map
    accepts = stcnnt_dsl.accepts(TINY_UNET)
    assert props["stcnnt.accepts"] == result.valid_sizes == f"any B, {accepts.text}"
    assert props["stcnnt.multiples"] == "8,8" and props["stcnnt.layout"] == "BTCHW"
    assert props["stcnnt.min_frames"] == "1" and props["stcnnt.minimum"] == "1"


@pytest.mark.parametrize(
    "shape",
    [
        (1, 2, 1, 16, 16),  # the export shape
        (3, 1, 1, 24, 40),  # every dynamic size changed; W != H, odd numbers of blocks
        (2, 5, 1, 8, 8),  # the smallest valid H, W
    ],
)
def test_onnx_runtime_computes_what_pytorch_computes(tiny_unet, shape):
    model, result, _ = tiny_unet
    x = torch.randn(shape)
    with torch.no_grad():
        want = model.eval()(x)
    (got,) = _session(result.path).run(None, {"input": x.numpy()})
    assert got.shape == tuple(want.shape)
    assert _relative_error(got, want) <= TOLERANCE


@pytest.mark.parametrize(
    "size",
    [
        (20, 16),  # H not a multiple of 8
        (16, 20),  # W not a multiple of 8
        (32, 20),  # H*W = 40*16: a reshape with one free axis would read a 40x16 image
        (20, 32),
    ],
)
def test_the_file_refuses_sizes_the_architecture_cannot_run(tiny_unet, size):
    _, result, _ = tiny_unet
    with pytest.raises(Exception, match=r"[Rr]eshape"):
        _session(result.path).run(None, {"input": torch.randn(1, 1, 1, *size).numpy()})


def test_eager_inference_is_unchanged_after_an_export(tiny_unet, forced):
    model, _, (x, before) = tiny_unet
    assert not plain_ops()  # plain ops only while exporting
    forced(layout_infer=TINY_UNET_LAYOUT, layout_train=TINY_UNET_LAYOUT)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_the_graph_copies_no_more_than_the_partitions_need(tiny_unet_on):
    """What made ONNX Runtime slower than eager (docs/export.md, benchmark): slicing
    the one Q/K/V output into three (copies), copying Slices of unit axes, and
    Transposes that move only axes of size 1. Q, K and V come from three convolutions
    instead, each going channels-last by the [N, C, H, W] -> [N, H, W, C] transpose
    that ONNX Runtime folds into the convolution's output reorder. On every machine:
    the graph is shaped for ONNX Runtime, whatever layout the machine's layers use."""
    result = tiny_unet_on[1]
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(result.path))).graph
    shapes = {v.name: _dims(v) for v in [*graph.value_info, *graph.input]}
    for node in graph.node:
        if node.op_type == "Transpose":
            perm = list(node.attribute[0].ints)
            moved = [axis for axis in perm if shapes[node.input[0]][axis] != 1]
            assert moved != sorted(moved), f"{node.name} moves only unit axes"
    # every attention layer: three convolutions of one input (Q, K, V), each output
    # going straight into a channels-last transpose
    weight_dims = {init.name: tuple(init.dims) for init in graph.initializer}
    by_input = collections.defaultdict(list)
    for node in graph.node:
        if node.op_type == "Conv":
            by_input[node.input[0], weight_dims.get(node.input[1])].append(node.output[0])
    thirds = [out for outs in by_input.values() if len(outs) == 3 for out in outs]
    model = tiny_unet_on[0]
    layers = [m for m in model.modules() if isinstance(m, SpatialAttention | TemporalAttention)]
    assert len(thirds) == 3 * len(layers) > 0
    nhwc = {
        node.input[0] for node in graph.node
        if node.op_type == "Transpose" and list(node.attribute[0].ints) == [0, 2, 3, 1]
    }  # fmt: skip
    assert set(thirds) <= nhwc


# A whole model: a backbone with a segmentation and a classification head.
TINY_MODEL = (
    "llm(channels=4, blocks=[L1], window=4, patch=2, heads={seg={kind=segmentation, "
    "classes=3}, cls={kind=classification, classes=5}})"
)


def test_a_whole_model_exports_one_named_output_per_head(tmp_path):
    model = stcnnt_dsl.build(TINY_MODEL, seed=0)
    assert isinstance(model, stcnnt_dsl.Model) and model.training
    result = stcnnt_dsl.export(model, tmp_path / "heads.onnx", (1, 1, 1, 8, 8))
    assert model.training  # exported in eval mode, handed back in training mode
    proto = onnx.load(str(result.path))
    assert [v.name for v in proto.graph.output] == ["seg", "cls"]
    assert _dims(proto.graph.output[0]) == ["batch", "frames", 3, "height", "width"]
    assert _dims(proto.graph.output[1]) == ["batch", 5]
    x = torch.randn(2, 3, 1, 16, 24)
    with torch.no_grad():
        want = model.eval()(x)
    got = _session(result.path).run(["seg", "cls"], {"input": x.numpy()})
    for name, have in zip(["seg", "cls"], got, strict=True):
        assert _relative_error(have, want[name]) <= TOLERANCE, name


def test_the_export_traces_the_model_once(tmp_path, monkeypatch):
    """torch's exporter re-traces the whole program to decompose it (half of an export's
    CPU, issue 23): with `RETRACE = False` (opt-in: its file runs slower in ONNX Runtime)
    this library's graphs go to ONNX as torch.export traced them, batch norms in eval mode
    included, and the file still computes what PyTorch computes."""
    from stcnnt_dsl.tools import export as exporter

    monkeypatch.setattr(exporter, "RETRACE", False)
    retraces = []
    original = torch.export.ExportedProgram.run_decompositions

    def counted(self, *args, **kwargs):
        retraces.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counted)
    model = stcnnt_dsl.build(f"{TINY_LLM[:-1]}, norm=batch2d)", seed=0).eval()
    result = stcnnt_dsl.export(model, tmp_path / "once.onnx", (1, 1, 1, 8, 8))
    assert retraces == []
    ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
    assert "BatchNormalization" in ops
    x = torch.randn(2, 3, 1, 16, 8)
    with torch.no_grad():
        want = model(x)
    (got,) = _session(result.path).run(None, {"input": x.numpy()})
    assert _relative_error(got, want) <= TOLERANCE


def test_a_model_built_with_another_layout_exports_in_that_layout(tmp_path):
    model = stcnnt_dsl.build(TINY_LLM, seed=0, layout="BCHW").eval()  # 2D: [B, C, H, W]
    result = stcnnt_dsl.export(model, tmp_path / "2d.onnx", (1, 1, 8, 8))
    assert result.inputs == {"input": ("batch", 1, "height", "width")}
    x = torch.randn(3, 1, 16, 8)
    with torch.no_grad():
        want = model(x)
    (got,) = _session(result.path).run(None, {"input": x.numpy()})
    assert got.shape == (3, 4, 16, 8)
    assert _relative_error(got, want) <= TOLERANCE
    assert result.valid_sizes == "any B, H and W multiples of 4"  # no T in 2D


def test_the_command_exports_a_saved_model_in_its_layout_without_input(tmp_path, capsys):
    model = stcnnt_dsl.build(TINY_LLM, seed=0, layout="BCHW")
    stcnnt_dsl.save_model(model, tmp_path / "2d.safetensors")
    out = tmp_path / "2d.onnx"
    assert cli.main(["export", str(tmp_path / "2d.safetensors"), "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["input_shape"] == [1, 1, 4, 4]  # the smallest valid input, as B, C, H, W
    assert doc["inputs"] == {"input": ["batch", 1, "height", "width"]}


def test_the_command_exports_a_fixed_size_architecture_with_static_h_w(tmp_path, capsys):
    arch = "llm(channels=4, blocks=[L1], window=4, patch=2, norm=layer, input_size=[16, 16])"
    path = tmp_path / "layer.onnx"
    rc = cli.main(["export", arch, "--input", "1,2,1,16,16", "-o", str(path), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["inputs"] == {"input": ["batch", "frames", 1, 16, 16]}
    assert doc["valid_sizes"] == "any B, exactly H=16, W=16, any T"
    assert doc["relative_error"] <= TOLERANCE  # checked against PyTorch on 1x2x1x16x16
    session = _session(path)
    (got,) = session.run(None, {"input": torch.randn(3, 1, 1, 16, 16).numpy()})
    assert got.shape == (3, 1, 4, 16, 16)
    with pytest.raises(Exception, match=r"[Ii]nvalid dimensions"):
        session.run(None, {"input": torch.randn(1, 1, 1, 24, 24).numpy()})


# ------------------------------------------------------------------------ bad input


def test_a_shape_the_architecture_cannot_run_is_a_shape_error(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ShapeError, match="nearest valid"):
        stcnnt_dsl.export(TINY_UNET, path, (1, 1, 1, 20, 16))
    assert not path.exists()


def test_an_unknown_format_names_the_formats(tmp_path):
    with pytest.raises(STCNNTError, match="unknown export format 'tflite'; choose from onnx"):
        stcnnt_dsl.export(TINY_UNET, tmp_path / "m.tflite", (1, 1, 1, 16, 16), format="tflite")


def test_a_missing_folder_is_named_with_the_fix(tmp_path):
    folder = tmp_path / "no" / "such"
    with pytest.raises(STCNNTError, match=r"folder .*such does not exist; create it first"):
        stcnnt_dsl.export(TINY_UNET, folder / "m.onnx", (1, 1, 1, 16, 16))


def test_a_folder_as_the_path_is_refused(tmp_path):
    with pytest.raises(STCNNTError, match="it is a folder"):
        stcnnt_dsl.export(TINY_UNET, tmp_path, (1, 1, 1, 16, 16))


@pytest.mark.parametrize("package", ["onnx", "onnxruntime", "onnxscript"])
def test_a_missing_package_names_the_install_command(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    with pytest.raises(
        STCNNTError, match=rf"{package} not installed\): pip install \"stcnnt-dsl\[export\]\""
    ):
        stcnnt_dsl.export(TINY_UNET, tmp_path / "m.onnx", (1, 1, 1, 16, 16))


def test_a_module_this_library_did_not_build_is_refused(tmp_path):
    with pytest.raises(STCNNTError, match=r"torch\.onnx\.export directly"):
        stcnnt_dsl.export(nn.Conv2d(1, 1, 3), tmp_path / "m.onnx", (1, 1, 1, 16, 16))


def test_a_half_precision_model_is_refused_with_the_fix(tmp_path):
    model = stcnnt_dsl.build(TINY_LLM, dtype=torch.bfloat16)
    with pytest.raises(STCNNTError, match=r"model.float\(\)"):
        stcnnt_dsl.export(model, tmp_path / "m.onnx", (1, 1, 1, 8, 8))


def test_an_architecture_whose_graph_depends_on_the_size_says_so(tmp_path):
    # V with a grid: the token is a whole window, whose size follows the input
    arch = 'llm(channels=4, blocks=["V1"], grid=2)'
    with pytest.raises(STCNNTError, match="cannot be exported with dynamic sizes yet"):
        stcnnt_dsl.export(arch, tmp_path / "v.onnx", (1, 1, 1, 8, 8))


def test_the_command_reports_a_bad_shape_as_a_user_error(tmp_path, capsys):
    rc = cli.main(["export", TINY_UNET, "--input", "1,1,1,20,16", "-o", str(tmp_path / "m.onnx")])
    assert rc == 2
    assert "nearest valid" in capsys.readouterr().err


# ---------------------------------------------------------------- the layers under export


def test_export_sees_plain_aten_ops_only():
    """No fused oneDNN convolution and no custom autograd Function in the exported graph
    (eager inference uses both: see nn/functional.py `plain_ops`, `can_fuse`)."""
    model = stcnnt_dsl.build(TINY_LLM, seed=0).eval()
    program = torch.export.export(model, (torch.randn(2, 2, 1, 8, 8),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not [t for t in targets if "mkldnn" in t or "autograd_function" in t]
    assert any("bmm" in t for t in targets)  # attention as matmuls (nn/functional.py)


# -------------------------------------------------------------- every bundled architecture


@pytest.mark.slow
@pytest.mark.parametrize("arch", stcnnt_dsl.list_architectures())
def test_every_bundled_architecture_exports_and_runs_at_two_sizes(arch, tmp_path):
    rule = stcnnt_dsl.build_graph(arch).rule()
    m = rule.multiple[0]
    model = stcnnt_dsl.build(arch, seed=0).eval()  # eval: no stochastic depth
    c = model.in_channels
    t = max(rule.min_frames, rule.frames_multiple)  # the fewest frames it runs on
    result = stcnnt_dsl.export(model, tmp_path / f"{arch}.onnx", (1, 2 * t, c, 2 * m, 2 * m))
    session = _session(result.path)
    for shape in [(1, 2 * t, c, 2 * m, 2 * m), (2, t, c, m, 3 * m)]:
        x = torch.randn(shape)
        with torch.no_grad():
            want = model(x)
        (got,) = session.run(None, {"input": x.numpy()})
        assert _relative_error(got, want) <= TOLERANCE, shape


@pytest.mark.slow
def test_upernet_heads_export_and_run_at_other_sizes(tmp_path):
    """UperNet's pyramid pooling and resizes follow the input's size in the file (issue
    20): torch's exporter turned AdaptiveAvgPool into an AvgPool with the traced size's
    kernel and the file failed in Concat at any other size; a pooling bin of 3 does not
    divide the sizes, and in mode 3d its resize to T fixed T (T == 3) at trace time."""
    head = {"kind": "segmentation", "classes": 2, "decoder": "upernet", "bins": [1, 3]}
    spec = {
        "unet": {"channels": [4, 8], "blocks": "C2"},
        "heads": {"flat": head, "deep": {**head, "mode": "3d"}},
    }
    model = stcnnt_dsl.build(spec, seed=0).eval()
    result = stcnnt_dsl.export(model, tmp_path / "upernet.onnx", (2, 2, 1, 16, 16))
    session = _session(result.path)
    for shape in [(2, 3, 1, 16, 48), (1, 5, 1, 40, 24)]:
        x = torch.randn(shape)
        with torch.no_grad():
            want = model(x)
        got = session.run(["flat", "deep"], {"input": x.numpy()})
        for name, have in zip(["flat", "deep"], got, strict=True):
            assert have.shape == tuple(want[name].shape), (name, shape)
            assert _relative_error(have, want[name]) <= TOLERANCE, (name, shape)


@pytest.mark.slow
def test_a_model_that_halves_t_exports_with_t_a_multiple(tmp_path):
    """mixed_unetr with halve_time: the file takes T = 2 x frame blocks (refused as "it
    fixes frames" before) and says so in its metadata."""
    spec = {"mixed_unetr": {"channels": [8, 16], "blocks": "C2", "halve_time": 1}}
    model = stcnnt_dsl.build(spec, seed=0).eval()
    path = tmp_path / "halves.onnx"
    result = stcnnt_dsl.export(model, path, input_shape=(1, 4, 1, 32, 32))
    assert "T a multiple of 2" in result.valid_sizes
    session = _session(path)
    assert session.get_modelmeta().custom_metadata_map["stcnnt.frames_multiple"] == "2"
    for frames in (2, 6):
        x = torch.randn(1, frames, 1, 32, 32)
        with torch.no_grad():
            want = model(x)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert _relative_error(got, want) < 1e-4
