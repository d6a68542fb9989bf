"""The `stcnnt` command line.

The real entry point runs in subprocesses (started together, they share the import
time of torch); `main()` runs in-process for the paths a subprocess cannot provoke (an
internal error) and for a fast check of every user-error path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

import stcnnt_dsl
from stcnnt_dsl import cli
from stcnnt_dsl.tools.io import load_model

ENTRY = shutil.which("stcnnt", path=str(Path(sys.executable).parent))
COMMAND = [ENTRY] if ENTRY else [sys.executable, "-m", "stcnnt_dsl.cli"]
HAS_DOT = shutil.which("dot") is not None


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run(args, cwd, env=None) -> Result:
    proc = subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "bad_syntax.yaml").write_text("unet:\n  channels: [16, 32\n  blocks: L1\n")
    (root / "typo.yaml").write_text("unet:\n  channels: [16, 32]\n  blocks: L1G1\n  windw: 4\n")
    (root / "bad_block.yaml").write_text("unet:\n  channels: [16, 32]\n  blocks: L1X1\n")
    (root / "good.yaml").write_text("unet:\n  channels: [8, 16]\n  blocks: L1G1\n")
    (root / "trailing.json").write_text('{"unet": {"channels": [8], "blocks": "L1",}}')
    (root / "latin1.yaml").write_bytes("name: caf\xe9\nunet: {channels: [8], blocks: L1}\n"
                                       .encode("latin-1"))  # fmt: skip
    (root / "empty_bin").mkdir()
    (root / "folder.svg").mkdir()
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(root / "noconfig.safetensors"))
    return root


# --------------------------------------------------------------------------- user errors

USER_ERRORS = {
    "no command": [],
    "missing arch": ["build"],
    "unknown option": ["build", "unet", "--bogus"],
    "bad dtype": ["profile", "--dtype", "float8"],
    "runs not a number": ["profile", "--runs", "many"],
    "negative warmup": ["profile", "unet-2d-small", "--input", "1,1,1,32,32", "--warmup", "-1"],
    "unknown architecture": ["check", "unett"],
    "missing file": ["check", "missing.yaml"],
    "yaml syntax": ["check", "bad_syntax.yaml"],
    "unknown key": ["check", "typo.yaml"],
    "block syntax in yaml": ["build", "bad_block.yaml"],
    "expression syntax": ["check", "unet(channels=[16,32], blocks=L1Q1)"],
    "shape rule": ["check", "unet", "--input", "1,1,1,100,100"],
    "input channels": ["check", "unet", "--input", "1,1,2,64,64"],
    "input not 5-D": ["check", "unet", "--input", "1,1,64,64"],
    "input not numbers": ["build", "unet", "--input", "a,b,c,d,e"],
    "explain typo": ["explain", "L1[windo=4]"],
    "explain stage": ["explain", "unet", "--stage", "nope"],
    "graph format": ["graph", "unet", "-o", "x.jpeg"],
    "graph folder": ["graph", "unet", "-o", "nodir/x.svg"],
    "weights folder": ["build", "llm", "--out", "nodir/m.safetensors"],
    "in-channels": ["build", "unet", "--in-channels", "0"],
    "profile shape": ["profile", "unet", "--input", "1,1,1,60,64", "--runs", "0"],
    "profile device": ["profile", "unet", "--device", "tpu", "--runs", "0"],
    "schema folder": ["schema", "--out", "nodir/s.json"],
    "import missing": ["import-reference", "missing.safetensors", "--out", "m.safetensors"],
    "json shape rule": ["check", "unet", "--input", "1,1,1,100,100", "--json"],
    # the user trial's catalogue (issue 11)
    "out is a folder": ["build", "llm", "--out", "."],
    "out json folder": ["build", "llm", "--out", ".", "--json"],
    "out not writable": ["build", "llm", "--out", "/proc/m.safetensors"],
    "out not safetensors": ["build", "llm", "--out", "m.pt"],
    "graph onto a folder": ["graph", "unet", "-o", "folder.svg"],
    "runs negative": ["profile", "--runs", "-1"],
    "import without config": ["import-reference", "noconfig.safetensors", "--out", "m.safetensors"],
    "config not json": [
        "import-reference",
        "noconfig.safetensors",
        "--config",
        "{bad",
        "--out",
        "m.safetensors",
    ],
    "explain block stage": ["explain", "L1G1", "--stage", "encoder.0"],
    "json trailing comma": ["check", "trailing.json"],
    "latin-1 file": ["check", "latin1.yaml"],
    "missing arch json": ["build", "--json"],
    "option not read": ["check", "unet(channels=[8], blocks=L1, decoder=[{causal=true}])"],
}
if not torch.cuda.is_available():
    USER_ERRORS["no cuda"] = ["profile", "unet", "--device", "cuda", "--runs", "0"]

EXPECTED_MESSAGE = {
    "unknown option": "unrecognized arguments: --bogus",
    "unknown architecture": 'did you mean "unet"',
    "unknown key": 'did you mean "window"',
    "yaml syntax": "bad_syntax.yaml",
    "block syntax in yaml": "^",
    "shape rule": "nearest valid",
    "explain typo": "^",
    "graph format": ".svg",
    "no cuda": "CUDA",
    "out is a folder": "it is a folder",
    "out json folder": "it is a folder",
    "out not writable": "cannot write",
    "out not safetensors": ".safetensors",
    "graph onto a folder": "it is a folder",
    "runs negative": "must be >= 0",
    "import without config": "--config FILE",
    "config not json": "not valid JSON",
    "explain block stage": "block string",
    "json trailing comma": "invalid JSON",
    "latin-1 file": "not UTF-8",
    "missing arch json": "the following arguments are required",
    "option not read": "is not read by any cell of decoder.0",
}


# Every kind of user error through the real entry point (each costs a torch import);
# the in-process test below covers every case of USER_ERRORS.
SUBPROCESS_ERRORS = [
    "no command", "unknown option", "bad dtype", "unknown architecture", "missing file",
    "yaml syntax", "unknown key", "expression syntax", "shape rule", "input not 5-D",
    "explain typo", "graph format", "weights folder", "profile device", "import missing",
    "json shape rule", "out is a folder", "out json folder", "out not writable",
    "graph onto a folder", "missing arch json", "option not read",
    *(["no cuda"] if "no cuda" in USER_ERRORS else []),
]  # fmt: skip


@pytest.fixture(scope="module")
def user_errors(files) -> dict[str, Result]:
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {k: pool.submit(run, USER_ERRORS[k], files) for k in SUBPROCESS_ERRORS}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_ERRORS)
def test_user_errors_exit_2_with_one_message(case, user_errors):
    result = user_errors[case]
    assert result.rc == 2, (result.out, result.err)
    assert "Traceback" not in result.err
    assert "error:" in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) <= 3, result.err  # one line, or a line plus a caret excerpt
    assert EXPECTED_MESSAGE.get(case, "") in result.err
    if case.startswith("json"):
        doc = result.json()
        assert doc["ok"] is False and doc["error"]["type"] == "ShapeError"
        assert doc["error"]["nearest"]
    elif "json" in case:  # every --json command prints one document, errors too
        doc = result.json()
        assert doc["ok"] is False and doc["error"]["message"]
    elif case not in ("no command",):
        assert result.out == ""


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_in_process(case, files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    assert cli.main(USER_ERRORS[case]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_user_errors_with_json_print_one_document(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    for case, args in USER_ERRORS.items():
        if "--json" not in args:
            args = [*args, "--json"] if args else args
        if not args:
            continue
        code = cli.main(args)
        out = capsys.readouterr().out
        assert code == 2, case
        doc = json.loads(out)  # exactly one document, whatever went wrong
        assert doc["ok"] is False and doc["error"]["message"], case


def test_max_params_with_units_gets_a_hint(capsys, monkeypatch):
    monkeypatch.setenv("STCNNT_MAX_PARAMS", "64GiB")
    assert cli.main(["build", "llm"]) == 2
    assert "no units" in capsys.readouterr().err


def test_check_and_explain_read_stdin(capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("unet:\n  channels: [8]\n  blocks: L1\n"))
    assert cli.main(["check", "-", "--input", "1,1,1,16,16"]) == 0
    assert "runs on 1x1x1x16x16" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO("L1 G1"))
    assert cli.main(["explain", "-"]) == 0
    assert "cell 1: G1 (global)" in capsys.readouterr().out


def test_check_json_gives_the_smallest_valid_size(capsys):
    assert cli.main(["check", "unet", "--json"]) == 0
    valid = json.loads(capsys.readouterr().out)["valid_inputs"]
    assert valid["multiple"] == [32, 32] and valid["minimum"] == [32, 32]
    assert cli.main(["check", "reference-unet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid_inputs"]["minimum"] == [32, 32]


def test_check_reads_the_input_in_a_layout(capsys):
    assert cli.main(["check", "unet-3d-small", "--input", "1,1,64,64,16", "--layout", "bchwd"]) == 0
    assert "accepts: H and W multiples of 16, any D" in capsys.readouterr().out
    assert cli.main(["check", "unet-3d-small", "--input", "1,1,60,64,16", "--layout", "BCHWD"]) == 2
    assert "input D=16, H=60, W=64 cannot run" in capsys.readouterr().err


def test_profile_without_input_says_which_size_it_chose(capsys):
    assert cli.main(["profile", "unet-2d-small", "--runs", "0"]) == 0
    captured = capsys.readouterr()
    assert "no --input given: profiling 1x1x1x16x16" in captured.err  # its smallest input
    assert "unet-2d-small: input 1x1x1x16x16" in captured.out


def test_internal_errors_exit_1_with_a_traceback(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(stcnnt_dsl.language.loading, "list_architectures", broken)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" in err and "boom" in err


# --------------------------------------------------------------------------- success paths


def test_entry_point_success_and_json(files):
    """The quick paths through the real entry point (not marked slow)."""
    listed = run(["list", "--json"], files)
    assert listed.rc == 0, listed.err
    names = [a["name"] for a in listed.json()["architectures"]]
    assert names == stcnnt_dsl.list_architectures()
    checked = run(["check", "unet", "--input", "1,16,1,256,256"], files)
    assert checked.rc == 0 and "1x16x32x256x256" in checked.out
    assert checked.err == ""


SUCCESS = {
    "version": ["--version"],
    "help": ["profile", "--help"],
    "list": ["list"],
    "check json": ["check", "good.yaml", "--input", "2,3,1,64,32", "--json"],
    "build": ["build", "unet-2d-small", "--input", "1,1,1,32,32", "--seed", "0",
              "--out", "m.safetensors", "--graph", "g.svg", "--json"],
    "build text": ["build", "hrnet", "--input", "1,2,1,64,64"],
    "profile default arch": ["profile", "--input", "1,1,1,32,32", "--runs", "1", "--quiet"],
    "profile json": ["profile", "unet-3d-small", "--input", "1,2,1,32,32", "--runs", "1",
                     "--json", "--layers"],
    "graph cell": ["graph", "hrnet", "-o", "h.svg", "--detail", "cell"],
    "graph stdout": ["graph", "llm", "-o", "-"],
    "graph json": ["graph", "unet", "-o", "u.dot", "--json"],
    "explain block": ["explain", "L1[window=4] G1 T1"],
    "explain json": ["explain", "unet", "--json"],
    "schema": ["schema"],
}  # fmt: skip


@pytest.fixture(scope="module")
def successes(files) -> dict[str, Result]:
    env_no_dot = {**os.environ, "PATH": str(files / "empty_bin")}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {k: pool.submit(run, args, files) for k, args in SUCCESS.items()}
        futures["no dot"] = pool.submit(run, ["graph", "unet", "-o", "nodot.svg"], files,
                                        env_no_dot)  # fmt: skip
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", [*SUCCESS, "no dot"])
def test_success_paths_exit_0(case, successes):
    result = successes[case]
    assert result.rc == 0, result.err
    assert "Traceback" not in result.err
    if "--json" in SUCCESS.get(case, []) or case == "schema":
        assert isinstance(result.json(), dict)


@pytest.mark.slow
def test_build_writes_loadable_weights_and_a_diagram(successes, files):
    doc = successes["build"].json()
    assert doc["ok"] and doc["parameters"] == 640350
    assert doc["output"] == [1, 1, 16, 32, 32]
    assert doc["stages"][0]["key"] == "encoder.0"
    model = load_model(files / "m.safetensors")
    reference = stcnnt_dsl.build("unet-2d-small", seed=0).eval()
    x = torch.randn(1, 1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    graph = doc["graph"]
    if HAS_DOT:
        assert graph["rendered"] and (files / "g.svg").read_text().count("<svg") == 1
    else:
        assert not graph["rendered"] and (files / "g.dot").exists()


@pytest.mark.slow
def test_text_outputs(successes):
    assert successes["version"].out.startswith("stcnnt-dsl ")
    assert "examples:" in successes["help"].out and "--dtype" in successes["help"].out
    assert "unet-2d-small" in successes["list"].out
    build = successes["build text"].out
    assert "level0.stage0" in build and "1x2x224x64x64" in build
    profile = successes["profile default arch"].out
    assert profile.startswith("(no --input") is False and "unet: input 1x1x1x32x32" in profile
    assert "2 per multiply-add" in profile and "encoder.0.cells.2" in profile
    assert successes["profile default arch"].err == ""  # --quiet, and not a terminal
    assert successes["graph stdout"].out.startswith("digraph")
    assert (
        "window" in successes["explain block"].out and "(inline)" in successes["explain block"].out
    )


@pytest.mark.slow
def test_json_documents(successes):
    check = successes["check json"].json()
    assert check["ok"] and check["output"] == [2, 3, 8, 64, 32]
    profile = successes["profile json"].json()
    assert profile["flop_counts"]["torch"] == profile["flop_counts"]["analytic"]
    assert profile["latency_ms"] > 0 and "Layer (type" in profile["layer_table"]
    assert successes["graph json"].json()["rendered"] is True
    explained = successes["explain json"].json()
    assert explained["stages"][0]["cells"][0]["options"]["norm"]["source"] == "defaults"


@pytest.mark.slow
def test_graph_without_graphviz_writes_dot_and_says_how(successes, files):
    result = successes["no dot"]
    assert "apt-get install graphviz" in result.err
    assert (files / "nodot.dot").read_text().startswith("digraph")
    assert "DOT source" in result.out


@pytest.mark.slow
def test_schema_validates_the_bundled_architectures(successes):
    jsonschema = pytest.importorskip("jsonschema")
    schema = successes["schema"].json()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    from importlib import resources

    folder = resources.files("stcnnt_dsl.architectures")
    for name in stcnnt_dsl.list_architectures():
        data = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert not list(validator.iter_errors(data)), name


def test_schema_rejects_broken_architectures():
    jsonschema = pytest.importorskip("jsonschema")
    from stcnnt_dsl.language.spec import spec_json_schema

    validator = jsonschema.Draft202012Validator(spec_json_schema())
    good = {"unet": {"channels": [16, 32], "blocks": "L1G1"}}
    assert validator.is_valid(good)
    for bad in (
        {"unet": {"channels": [16, 32], "blocks": "L1G1", "windw": 4}},
        {"unet": {"channels": [16, 32], "blocks": "L1G1"}, "defaults": {"norm": "lay"}},
        {"unet": {"channels": 0, "blocks": "L1G1"}},
        {"name": "no topology"},
        {"unet": good["unet"], "llm": {"channels": 8, "blocks": "L1"}},
    ):
        assert not validator.is_valid(bad), bad


REFERENCE_DIR = Path(
    os.environ.get(
        "STCNNT_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
)


@pytest.mark.skipif(
    not (REFERENCE_DIR / "reference-unet.safetensors").is_file(),
    reason=f"reference fixtures not found in {REFERENCE_DIR} (set STCNNT_REFERENCE_DIR)",
)
def test_import_reference_writes_a_loadable_file(tmp_path):
    from stcnnt_dsl.compat import import_reference

    source = REFERENCE_DIR / "reference-unet.safetensors"
    result = run(["import-reference", str(source), "--out", "ref.safetensors", "--json"], tmp_path)
    assert result.rc == 0, result.err
    assert result.json()["weights"].endswith("ref.safetensors")
    loaded = load_model(tmp_path / "ref.safetensors")
    direct = import_reference(source).eval()
    x = torch.randn(1, 2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), direct(x))


def test_progress_goes_to_stderr_only_on_a_terminal(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["graph", "llm", "-o", str(tmp_path / "g.dot")]) == 0
    captured = capsys.readouterr()
    assert "drawing" in captured.err and captured.out.startswith("wrote")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert cli.main(["graph", "llm", "-o", str(tmp_path / "g.dot")]) == 0
    assert capsys.readouterr().err == ""
