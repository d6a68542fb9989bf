"""Saving and loading backbones: safetensors with the spec in the metadata, no pickle."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import stcnnt_dsl
from stcnnt_dsl.errors import WeightsError
from stcnnt_dsl.language.spec import dump_spec
from stcnnt_dsl.tools.io import FORMAT_VERSION, load_model, read_metadata, save_model

SMALL_ARCHS = [
    "unet-2d-small",
    "unet-3d-small",
    "llm",
    "hrnet(channels=[8, 16], blocks=T1L1G1, resample=block)",
    "unet(channels=[8, 16], blocks=[C2 L1, V1[grid=2], T1[causal=true]], gate=false)",
]


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_round_trip_gives_identical_outputs(arch, tmp_path):
    model = stcnnt_dsl.build(arch, seed=3).eval()
    path = save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.spec == model.spec
    x = torch.randn(1, 2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("arch", stcnnt_dsl.list_architectures())
def test_round_trip_of_every_bundled_architecture(arch, tmp_path):
    """Same spec and bit-identical tensors (hence identical outputs) for each."""
    model = stcnnt_dsl.build(arch, seed=3)
    loaded = load_model(save_model(model, tmp_path / "model.safetensors"))
    assert loaded.spec == model.spec
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_round_trip_after_training_steps_keeps_buffers(tmp_path):
    """batch-norm statistics are buffers: they must travel with the weights."""
    model = stcnnt_dsl.build("unet-2d-small", seed=0)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 1, 32, 32))
    path = save_model(model.eval(), tmp_path / "m.safetensors")
    loaded = load_model(path)
    x = torch.randn(1, 1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_metadata_holds_the_spec_and_versions(tmp_path):
    model = stcnnt_dsl.build("unet(channels=[8, 16], blocks=L1G1)", in_channels=2)
    path = save_model(model, tmp_path / "m.safetensors", extra_metadata={"run": "42"})
    meta = read_metadata(path)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["stcnnt_dsl_version"] == stcnnt_dsl.__version__
    assert meta["spec"] == dump_spec(model.spec)
    assert meta["run"] == "42"
    assert stcnnt_dsl.load_model(path).in_channels == 2


def test_file_is_plain_safetensors_without_pickle(tmp_path):
    path = save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)"), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert "__metadata__" in header
    assert b"\x80\x04" not in raw[8 : 8 + header_len]  # no pickle protocol marker
    assert load_file(str(path))  # readable by any safetensors reader


def test_half_precision_weights_load_in_their_dtype(tmp_path):
    model = stcnnt_dsl.build("llm(channels=8, blocks=L1)", dtype=torch.bfloat16)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert next(load_model(path, dtype=torch.float32).parameters()).dtype == torch.float32


def _tamper(path, change):
    tensors = load_file(str(path))
    meta = read_metadata(path)
    change(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def test_mismatched_tensors_are_named(tmp_path):
    path = save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)"), tmp_path / "m.safetensors")
    name = next(iter(load_file(str(path))))

    _tamper(path, lambda t, m: t.pop(name))
    with pytest.raises(WeightsError, match=f"missing tensors: {name}"):
        load_model(path)

    path = save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)"), tmp_path / "m.safetensors")
    _tamper(path, lambda t, m: t.__setitem__(name, torch.zeros(3, 3)))
    with pytest.raises(WeightsError, match=rf"shape mismatches: {name} is \[3, 3\]"):
        load_model(path)

    path = save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)"), tmp_path / "m.safetensors")
    _tamper(path, lambda t, m: m.__setitem__("spec", dump_spec("llm(channels=16, blocks=L1)")))
    with pytest.raises(WeightsError, match="do not match the spec"):
        load_model(path)

    path = save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)"), tmp_path / "m.safetensors")
    _tamper(path, lambda t, m: t.__setitem__("extra.weight", torch.zeros(1)))
    with pytest.raises(WeightsError, match=r"no place for: extra\.weight"):
        load_model(path)


def test_files_that_are_not_ours(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightsError, match="not written by stcnnt-dsl"):
        load_model(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_model(garbage)
    future = tmp_path / "future.safetensors"
    save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)"), future)
    _tamper(future, lambda t, m: m.__setitem__("format_version", "99"))
    with pytest.raises(WeightsError, match="format version '99'"):
        load_model(future)
    broken = tmp_path / "broken.safetensors"
    save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)"), broken)
    _tamper(broken, lambda t, m: m.__setitem__("spec", "llm: {channels: 8, blocks: L9}"))
    with pytest.raises(WeightsError, match="spec in the file's metadata is not valid"):
        load_model(broken)


def test_save_needs_a_backbone_and_a_folder(tmp_path):
    with pytest.raises(WeightsError, match=r"built by stcnnt_dsl\.build"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    model = stcnnt_dsl.build("llm(channels=8, blocks=L1)")
    with pytest.raises(WeightsError, match="does not exist"):
        save_model(model, tmp_path / "no" / "m.safetensors")
    with pytest.raises(WeightsError, match=r"end in \.safetensors"):
        save_model(model, tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="it is a folder"):
        save_model(model, tmp_path)
    with pytest.raises(WeightsError, match="is a folder"):
        load_model(tmp_path)


def test_a_compiled_model_is_saved_as_its_module(tmp_path):
    model = stcnnt_dsl.build("llm(channels=8, blocks=L1)", seed=0)
    compiled = torch.compile(model)  # not run: saving only unwraps it
    path = save_model(compiled, tmp_path / "m.safetensors")
    loaded = load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_mixed_dtypes_are_kept(tmp_path):
    model = stcnnt_dsl.build("llm(channels=8, blocks=L1, norm=batch2d)", seed=0)
    for name, param in model.named_parameters():
        if "norm" not in name:
            param.data = param.data.to(torch.bfloat16)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == tensor.dtype, name
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16, torch.float32}


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "m.safetensors"
    model = stcnnt_dsl.build("llm(channels=8, blocks=L1)", seed=0)
    save_model(model, path)
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("stcnnt_dsl.tools.io.save_file", disk_full)
    with pytest.raises(WeightsError, match="No space left"):
        save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)", seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left
    assert safetensors.torch.load_file(path)


def test_a_writer_killed_mid_save_leaves_the_old_file_intact(tmp_path):
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "m.safetensors"
    save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)", seed=0), path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, stcnnt_dsl.tools.io as io
        def crash(tensors, filename, metadata=None):
            with open(filename, "wb") as handle:
                handle.write(b"half a file")
            os._exit(9)  # the process dies mid-save: no cleanup runs
        io.save_file = crash
        io.save_model(stcnnt_dsl.build("llm(channels=8, blocks=L1)", seed=1), {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", "import stcnnt_dsl\n" + script])
    assert result.returncode == 9
    assert path.read_bytes() == before


def test_files_of_format_1_load_with_the_old_hrnet_names(tmp_path):
    """stcnnt-dsl 0.1 wrote HR-Net modules as blocks.level0_stage0, outputs.0, ...;
    those files still load, with the same weights."""
    import re

    model = stcnnt_dsl.build("hrnet(channels=[8, 16], blocks=L1, resample=block)", seed=0)
    new = {k: v.contiguous() for k, v in model.state_dict().items()}
    old_names = [
        (r"^level(\d+)\.stage(\d+)\.", r"blocks.level\1_stage\2."),
        (r"^level(\d+)\.output\.", r"outputs.\1."),
        (r"^exchange\.stage(\d+)\.(\d+)to(\d+)\.", r"transitions.stage\1_\2to\3."),
        (r"^upsample\.(\d+)\.", lambda m: f"output_up.{int(m[1]) - 1}."),
    ]
    old = {}
    for key, value in new.items():
        for pattern, repl in old_names:
            key = re.sub(pattern, repl, key)
        old[key] = value
    assert any(k.startswith("transitions.") for k in old) and any(
        k.startswith("output_up.") for k in old
    )
    metadata = {"format": "stcnnt-dsl", "format_version": "1", "spec": dump_spec(model.spec)}
    save_file(old, str(tmp_path / "old.safetensors"), metadata=metadata)
    loaded = load_model(tmp_path / "old.safetensors")
    for key, value in new.items():
        assert torch.equal(loaded.state_dict()[key], value), key
