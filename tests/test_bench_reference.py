"""tools/bench_reference.py: clear errors for a missing or broken reference checkout, the
reference's default configuration, interleaved timing; with a checkout (set
STCNNT_REFERENCE_SRC), agreement of the two implementations."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stcnnt_dsl.nn import tuning

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_reference.py"


def _tool():
    spec = importlib.util.spec_from_file_location("bench_reference", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout
    )


def test_a_missing_source_is_one_clear_error(tmp_path):
    done = _run("--reference-src", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "no such directory" in done.stderr and "Traceback" not in done.stderr
    done = _run("--reference-src", str(tmp_path))
    assert done.returncode == 2
    assert "not a checkout of the reference" in done.stderr
    assert "model/backbone/backbone_unet.py" in done.stderr


def test_a_source_that_does_not_import_names_the_module(tmp_path):
    backbone = tmp_path / "model" / "backbone"
    backbone.mkdir(parents=True)
    (backbone / "backbone_unet.py").write_text("import a_module_nobody_has\n")
    (backbone / "backbone_hrnet.py").write_text("\n")
    done = _run("--reference-src", str(tmp_path), "--models", "unet")
    assert done.returncode == 2
    assert "does not import" in done.stderr and "a_module_nobody_has" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_options_are_one_clear_error(tmp_path):
    done = _run("--reference-src", str(tmp_path), "--sizes", "1x8x64x64")
    assert done.returncode == 2 and "BxTxCxHxW" in done.stderr
    done = _run("--reference-src", str(tmp_path), "--models", "vit")
    assert done.returncode == 2 and "choose from unet, hrnet" in done.stderr


def test_the_reference_defaults():
    tool = _tool()
    config = tool.reference_config("hrnet", (1, 8, 1, 64, 64))
    assert config["n_head"] == 32 and config["norm_mode"] == "instance2d"
    assert (config["height"], config["width"], config["time"]) == (64, 64, 8)
    section = config["backbone_hrnet"]
    assert (section["C"], section["num_resolution_levels"]) == (32, 3)
    assert section["block_str"] == ["T1L1G1"] and config["backbone_model"] == "STCNNT_HRNET"
    assert tool.parse_size("1x16x1x64x64") == (1, 16, 1, 64, 64)


def test_pairs_are_interleaved():
    order = []
    times = tuning.interleaved_times(
        {"ref": lambda: order.append("r"), "ours": lambda: order.append("o")}, repeats=3
    )
    assert order == ["r", "o"] * 4  # one warm-up each, then pairs
    assert [len(v) for v in times.values()] == [3, 3]


@pytest.mark.skipif(
    not os.environ.get("STCNNT_REFERENCE_SRC"),
    reason="needs a checkout of the reference implementation (set STCNNT_REFERENCE_SRC)",
)
def test_agreement_with_the_reference(tmp_path):
    done = _run(
        "--reference-src", os.environ["STCNNT_REFERENCE_SRC"], "--sizes", "1x1x1x64x64",
        "--repeats", "1", "--no-memory", "--json", str(tmp_path / "out.json"), timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"unet", "hrnet"}
    assert all(r["rel_error"] < 1e-4 and r["params"][0] == r["params"][1] for r in rows)
