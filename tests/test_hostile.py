"""Hostile input: refused quickly, in bounded memory, without running anything.

Bounds (each case must raise an `STCNNTError` within them):
- time: 0.5 s for the alias bomb, 1 s for every other case (wall clock, this process);
- memory: 50 MB of Python allocations at the peak (tracemalloc), and, for all cases run
  together in a fresh interpreter, less than 100 MB growth of the process's peak RSS.

Run `python tests/test_hostile.py` to print the measured time and memory of every case.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import stcnnt_dsl
from stcnnt_dsl import STCNNTError, WeightsError, build, load_spec, parse_block
from stcnnt_dsl.language.parser import parse_expression

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
MAX_PYTHON_MEMORY = 50 * MB
MAX_RSS_GROWTH = 100 * MB


pytestmark = pytest.mark.usefixtures("one_thread")


def _alias_bomb() -> str:
    """The "billion laughs": 9 levels of 9 aliases (9^9 = 387,420,489 strings if
    expanded)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append("unet: {channels: *l9, blocks: L1}")
    return "\n".join(lines) + "\n"


def _deep_block_yaml(levels: int) -> str:
    return "".join(" " * i + f"k{i}:\n" for i in range(levels)) + " " * levels + "x: 1\n"


def _file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _sparse(tmp: Path, size: int) -> Path:
    path = tmp / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(size)  # a sparse file: no disk space, no time
    return path


# name -> (seconds allowed, builder of the call given a temp folder)
CASES: dict[str, tuple[float, Callable[[Path], Callable[[], Any]]]] = {
    "alias-bomb-text": (0.5, lambda tmp: lambda: load_spec(_alias_bomb())),
    "alias-bomb-file": (0.5, lambda tmp: lambda: load_spec(_file(tmp, "bomb.yaml", _alias_bomb()))),
    "deep-yaml-lists-10k": (1.0, lambda tmp: lambda: load_spec(
        "unet: " + "[" * 10_000 + "]" * 10_000 + "\n")),
    "deep-yaml-maps-10k": (1.0, lambda tmp: lambda: load_spec(
        "unet: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n")),
    "deep-yaml-unclosed-100k": (1.0, lambda tmp: lambda: load_spec("unet: " + "[" * 100_000)),
    "deep-yaml-indent-1k": (1.0, lambda tmp: lambda: load_spec(_deep_block_yaml(1_000))),
    "deep-expression-10k": (1.0, lambda tmp: lambda: load_spec(
        "unet(channels=" + "[" * 10_000 + "8" + "]" * 10_000 + ", blocks=L1)")),
    "deep-block-string-10k": (1.0, lambda tmp: lambda: parse_block(
        "(" * 10_000 + "L1" + ")" * 10_000)),
    "huge-file-100MB": (1.0, lambda tmp: lambda: load_spec(_sparse(tmp, 100 * MB))),
    "huge-yaml-text-2MB": (1.0, lambda tmp: lambda: load_spec(
        "unet:\n  blocks: L1\n  channels: [" + "8, " * 700_000 + "8]\n")),
    "long-block-string-1M": (1.0, lambda tmp: lambda: parse_block("L1" * 500_000)),
    "long-block-string-in-yaml": (1.0, lambda tmp: lambda: load_spec(
        "unet:\n  channels: [8]\n  blocks: " + "L1" * 450_000 + "\n")),
    "long-expression-1M": (1.0, lambda tmp: lambda: parse_expression(
        "unet(channels=[8], blocks=" + "L1" * 500_000 + ")")),
    "many-values-150k": (1.0, lambda tmp: lambda: load_spec(
        "unet:\n  blocks: L1\n  channels: [" + ",".join(["8"] * 150_000) + "]\n")),
    "many-keys-80k": (1.0, lambda tmp: lambda: load_spec(
        "unet:\n" + "".join(f"  k{i}: 1\n" for i in range(80_000)))),
    "long-number-5000-digits": (1.0, lambda tmp: lambda: load_spec(
        "unet:\n  blocks: L1\n  channels: [" + "9" * 5_000 + "]\n")),
    "many-cells-in-a-block": (1.0, lambda tmp: lambda: parse_block("((L1G1)*32)*32")),
    "many-cells-in-a-model": (1.0, lambda tmp: lambda: build(
        {"llm": {"channels": 8, "blocks": "(L1)*1000", "depth": 1000}})),
    "levels-100k": (1.0, lambda tmp: lambda: build(
        {"unet": {"channels": [8] * 100_000, "blocks": "L1"}})),
    "depth-1e9": (1.0, lambda tmp: lambda: build(
        {"llm": {"channels": 8, "blocks": "L1", "depth": 10**9}})),
    "channels-1e9": (1.0, lambda tmp: lambda: build(
        {"unet": {"channels": [1_000_000_000], "blocks": "T1L1G1"}})),
    "channels-10^10000": (1.0, lambda tmp: lambda: build(
        {"unet": {"channels": [10**10_000], "blocks": "T1L1G1"}})),
    "input-1e12-frames": (1.0, lambda tmp: lambda: stcnnt_dsl.check(
        "unet", (1, 10**12, 1, 256, 256))),
}  # fmt: skip


def _measure(name: str, tmp: Path, *, trace: bool) -> dict[str, Any]:
    """Run one case; return its time (s), peak Python memory (bytes) and error."""
    _, make = CASES[name]
    call = make(tmp)
    if trace:
        tracemalloc.start()
    start = time.process_time()
    try:
        call()
        error = None
    except STCNNTError as err:
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    elapsed = time.process_time() - start
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"seconds": elapsed, "python_peak_bytes": peak, "error": error}


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """Build the parsers once, so that timings measure the input, not first use."""
    parse_block("L1G1")
    parse_expression("unet(channels=[8], blocks=L1)")
    load_spec("unet:\n  channels: [8]\n  blocks: L1\n")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_fast(name: str, tmp_path: Path):
    limit, _ = CASES[name]
    result = _measure(name, tmp_path, trace=False)
    assert result["error"] is not None, f"{name} was accepted"
    assert result["seconds"] < limit, result


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_in_bounded_memory(name: str, tmp_path: Path):
    result = _measure(name, tmp_path, trace=True)
    assert result["error"] is not None
    assert result["python_peak_bytes"] < MAX_PYTHON_MEMORY, result


def test_alias_bomb_bounds():
    """The alias bomb explicitly: < 0.5 s and < 50 MB of Python memory at the peak."""
    text = _alias_bomb()
    start = time.process_time()
    with pytest.raises(STCNNTError, match="aliases"):
        load_spec(text)
    assert time.process_time() - start < 0.5
    tracemalloc.start()
    with pytest.raises(STCNNTError):
        load_spec(text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MAX_PYTHON_MEMORY


def test_deep_nesting_bounds():
    """10,000 levels of nesting: < 1 s, < 50 MB, and a message naming the limit."""
    for text in ("unet: " + "[" * 10_000 + "]" * 10_000, "unet: " + "{a: " * 10_000 + "}"):
        tracemalloc.start()
        start = time.process_time()
        with pytest.raises(STCNNTError, match="nesting deeper than 32"):
            load_spec(text)
        elapsed = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < 1.0 and peak < MAX_PYTHON_MEMORY, (elapsed, peak)


def test_huge_file_is_refused_by_size_before_reading(tmp_path: Path, monkeypatch):
    path = _sparse(tmp_path, 100 * MB)
    opened: list[str] = []
    real_open = Path.open

    def spy(self, *args, **kwargs):
        opened.append(str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    with pytest.raises(STCNNTError, match="104857600 bytes"):
        load_spec(path)
    assert str(path) not in opened


def test_rss_growth_of_all_cases_in_a_fresh_interpreter(tmp_path: Path):
    """Every case, one after another, in a new process: the peak RSS grows < 100 MB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["rss_growth_bytes"] < MAX_RSS_GROWTH, report["rss_growth_bytes"]
    for name, case in report["cases"].items():
        assert case["error"], name


# --------------------------------------------------------------------------- no code runs

_TAGGED = [
    "unet: !!python/object/apply:os.system ['touch {marker}']\n",
    "!!python/object/apply:os.system\nargs: ['touch {marker}']\n",
    "unet: {{channels: [8], blocks: !!python/name:os.system }}\n",
    "unet: !!python/object/new:subprocess.Popen [[touch, '{marker}']]\n",
    "unet: !!python/module:os\n",
    "%TAG !py! tag:yaml.org,2002:python/\n---\n"
    "unet: !py!object/apply:os.system ['touch {marker}']\n",
    "unet: {{channels: [8], blocks: L1, "
    "name: !!python/object/apply:os.system ['touch {marker}']}}\n",
    "unet: !include /etc/passwd\n",
    "unet: {{channels: !!binary aGVsbG8=, blocks: L1}}\n",
]


@pytest.mark.parametrize("template", _TAGGED)
def test_yaml_object_tags_never_construct_anything(template: str, tmp_path: Path):
    marker = tmp_path / "marker"
    text = template.format(marker=marker)
    with pytest.raises(STCNNTError):
        load_spec(text)
    with pytest.raises(STCNNTError):
        load_spec(_file(tmp_path, "arch.yaml", text))
    assert not marker.exists()


def test_code_in_expressions_and_block_strings_is_never_evaluated(tmp_path: Path):
    marker = tmp_path / "marker"
    code = f"__import__('os').system('touch {marker}')"
    for bad in (
        f"unet(channels=[8], blocks=L1, activation={code})",
        f'unet(channels=[8], blocks=L1, activation="{code}")',
        f'unet(channels=[8], blocks="L1[qkv={code}]")',
        f"unet(channels=[8], blocks=L1, defaults={{norm={code}}})",
    ):
        with pytest.raises(STCNNTError):
            build(bad)
    with pytest.raises(STCNNTError):
        parse_block(f'L1[qkv="{code}"]')
    # A string where any text is allowed stays a string: a name is only a name.
    model = build(f'unet(channels=[8], blocks=L1, name="{code}")')
    assert model.spec.name == code
    assert not marker.exists()


def test_values_that_name_modules_import_nothing():
    """Values naming modules never import them (the registries are closed)."""
    names = ["antigravity", "this", "turtle", "tkinter", "http.server"]
    before = set(sys.modules)
    for name in names:
        for source in (
            {"unet": {"channels": [8], "blocks": "L1", "activation": name}},
            {"unet": {"channels": [8], "blocks": "L1", "norm": f"{name}.Norm"}},
            f"unet(channels=[8], blocks=L1, qkv={name.replace('.', '_')})",
        ):
            with pytest.raises(STCNNTError):
                build(source)
    assert not {n for n in set(sys.modules) - before if n.split(".")[0] in
                {"antigravity", "this", "turtle", "tkinter", "http"}}  # fmt: skip


_FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__", "breakpoint"}
_FORBIDDEN_MODULES = {"pickle", "marshal", "dill", "cloudpickle", "shelve"}
_FORBIDDEN_ATTRS = {
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"),
    ("yaml", "Loader"), ("yaml", "UnsafeLoader"), ("yaml", "FullLoader"), ("torch", "load"),
    ("importlib", "import_module"),
}  # fmt: skip


def test_the_package_has_no_code_evaluation_or_unsafe_loading():
    """No eval/exec/__import__, no pickle, no yaml.load/torch.load anywhere in the
    package: configs can only select from closed registries."""
    problems = []
    for path in sorted((ROOT / "stcnnt_dsl").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in _FORBIDDEN_NAMES:
                    problems.append(f"{where}:{node.lineno}: {node.func.id}()")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in _FORBIDDEN_ATTRS:
                    problems.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]  # fmt: skip
                for module in modules:
                    if module.split(".")[0] in _FORBIDDEN_MODULES:
                        problems.append(f"{where}:{node.lineno}: import {module}")
                if isinstance(node, ast.ImportFrom) and any(
                    a.name == "import_module" for a in node.names
                ):
                    problems.append(f"{where}:{node.lineno}: import_module")
    # The dynamic imports, none reachable from a config: the torch-based names of the
    # package, from a closed table of literal module names (tests/test_layout.py checks
    # the table is literal); the optional libraries `data/_deps.need` imports, named by
    # literals in the package's code; a descriptor's "module:Name" reference,
    # given in Python by whoever registers the kind (specs only pick registered names).
    allowed = {
        str(Path("stcnnt_dsl") / name) for name in ("_lazy.py", "data/_deps.py", "registry.py")
    }
    problems = [p for p in problems if not (p.split(":")[0] in allowed and "import_module" in p)]
    assert not problems, problems


# --------------------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "llm.safetensors"
    stcnnt_dsl.save_model(build({"llm": {"channels": 8, "blocks": "L1G1", "depth": 2}}, seed=0),
                          path)  # fmt: skip
    return path


def _rewrite(src: Path, dst: Path, *, tensors=None, metadata=None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as handle:
        meta = dict(handle.metadata())
        data = {k: handle.get_tensor(k) for k in handle.keys()}
    if tensors is not None:
        data = tensors(data)
    if metadata is not None:
        meta = metadata(meta)
    save_file(data, str(dst), metadata=meta)
    return dst


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_files_are_never_unpickled(tmp_path: Path):
    marker = tmp_path / "marker"
    for name in ("model.safetensors", "model.pt"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"state_dict": _Boom(marker)}))
        with pytest.raises(WeightsError):
            stcnnt_dsl.load_model(path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.safetensors")
    with pytest.raises(WeightsError):
        stcnnt_dsl.load_model(tmp_path / "torch.safetensors")
    assert not marker.exists()


def test_round_trip_then_every_mismatch_is_refused(saved: Path, tmp_path: Path):
    model = stcnnt_dsl.load_model(saved)
    assert isinstance(model, torch.nn.Module)

    def wider(meta):
        return {**meta, "spec": meta["spec"].replace("channels: 8", "channels: 16")}

    def dropped(data):
        return {k: v for i, (k, v) in enumerate(data.items()) if i}

    def extra(data):
        return {**data, "blocks.9.cells.0.proj.weight": torch.zeros(1)}

    def reshaped(data):
        k = next(k for k in data if data[k].dim() >= 2)
        return {**data, k: torch.zeros(data[k].shape[0] + 1, *data[k].shape[1:])}

    def integer(data):
        return {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in data.items()}

    cases = {
        "spec says 16 channels": ({"metadata": wider}, ["shape"]),
        "a tensor is missing": ({"tensors": dropped}, ["missing"]),
        "an extra tensor": ({"tensors": extra}, ["no place"]),
        "a wrong shape": ({"tensors": reshaped}, ["shape"]),
        "integer weights": ({"tensors": integer}, ["dtype"]),
        "not our format": ({"metadata": lambda m: {"format": "other"}}, ["not written by"]),
        "a hostile spec": ({"metadata": lambda m: {**m, "spec": _alias_bomb()}}, ["spec"]),
        "a broken spec": ({"metadata": lambda m: {**m, "spec": "unet: {channels: [8]"}},
                          ["spec"]),
        "an absurd spec": ({"metadata": lambda m: {**m, "spec": "unet(channels=[1000000000], "
                                                   "blocks=L1)"}}, ["parameters"]),
        "a future format": ({"metadata": lambda m: {**m, "format_version": "99"}}, ["version"]),
    }  # fmt: skip
    for label, (change, words) in cases.items():
        path = _rewrite(saved, tmp_path / "bad.safetensors", **change)
        start = time.process_time()
        with pytest.raises(STCNNTError) as info:
            stcnnt_dsl.load_model(path)
            pytest.fail(f"accepted: {label}")
        assert time.process_time() - start < 2.0, label
        for word in words:
            assert word in str(info.value), (label, str(info.value))


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, (10**15).to_bytes(8, "little") + b"{}", b"\x10\x00\x00\x00\x00\x00\x00\x00{"
     + b"x" * 15, (2).to_bytes(8, "little") + b"{}" + b"junk"],
    ids=["empty", "short", "huge-header-length", "bad-json", "trailing-junk"],
)  # fmt: skip
def test_corrupt_weights_files_are_refused(content: bytes, tmp_path: Path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError):
        stcnnt_dsl.load_model(path)


# --------------------------------------------------------------------------- report script


def _measure_all(folder: str) -> dict[str, Any]:
    tmp = Path(folder)
    parse_block("L1G1")
    parse_expression("unet(channels=[8], blocks=L1)")
    load_spec("unet:\n  channels: [8]\n  blocks: L1\n")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cases = {}
    for name in CASES:
        timed = _measure(name, tmp, trace=False)
        traced = _measure(name, tmp, trace=True)
        cases[name] = {**timed, "python_peak_bytes": traced["python_peak_bytes"]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_baseline_bytes": base, "rss_growth_bytes": peak - base, "cases": cases}


if __name__ == "__main__":
    import tempfile

    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    print(json.dumps(_measure_all(folder), indent=1))


# --------------------------------------------------------------------------- the command line

_CLI_CASES = {
    "alias bomb": (["check", "bomb.yaml"], "aliases"),
    "deep nesting": (["check", "deep.yaml"], "nesting deeper than 32"),
    "huge file": (["check", "huge.yaml"], "104857600 bytes"),
    "python tag": (["build", "tag.yaml"], "tags are not allowed"),
    "absurd channels (check)": (["check", "unet(channels=[1000000000], blocks=L1)"], "max_params"),
    "absurd channels (build)": (["build", "unet(channels=[1000000000], blocks=L1)"], "max_params"),
    "absurd input (check)": (["check", "unet", "--input", "64,64,1,512,512"], "max_memory"),
    "absurd input (profile)": (  # timing would allocate it: refused first
        ["profile", "unet", "--input", "1,100000,1,512,512", "--runs", "1"],
        "max_memory",
    ),
    "long block string": (["explain", "L1" * 60_000], "limit is 100000"),
}


@pytest.fixture()
def cli_files(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, "bomb.yaml", _alias_bomb())
    _file(tmp_path, "deep.yaml", "unet: " + "[" * 10_000 + "]" * 10_000 + "\n")
    _sparse(tmp_path, 100 * MB)
    _file(tmp_path, "tag.yaml", f"unet: !!python/object/apply:os.system ['touch {tmp_path}/m']\n")
    return tmp_path


@pytest.mark.parametrize("case", list(_CLI_CASES))
def test_cli_refuses_hostile_input_with_one_message(case, cli_files, capsys):
    from stcnnt_dsl import cli

    args, words = _CLI_CASES[case]
    start = time.process_time()
    assert cli.main(args) == 2
    assert time.process_time() - start < 2.0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err and words in err, err
    assert not (cli_files / "m").exists()


def test_cli_json_reports_the_resource_error(cli_files, capsys):
    from stcnnt_dsl import cli

    assert cli.main(["check", "unet", "--input", "64,64,1,512,512", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["error"]["type"] == "ResourceError"
    assert "TiB" in doc["error"]["message"]


def test_cli_entry_point_exits_2_on_hostile_input(cli_files):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "stcnnt_dsl.cli", "build", "bomb.yaml"],
        capture_output=True, text=True, env=env, timeout=120, cwd=cli_files,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "aliases" in result.stderr and "Traceback" not in result.stderr


def test_a_weights_file_cannot_make_the_loader_read_other_files(saved: Path, tmp_path: Path):
    text = "unet:\n  channels: [8]\n  blocks: L1\n  x: TOPSECRET\n"
    secret = _file(tmp_path, "secret.yaml", text)
    for spec in (str(secret), "secret.yaml", "unet", "/etc/passwd"):
        path = _rewrite(saved, tmp_path / "bad.safetensors", metadata=lambda m, s=spec: {
            **m, "spec": s})  # fmt: skip
        with pytest.raises(WeightsError) as info:
            stcnnt_dsl.load_model(path)
        assert "TOPSECRET" not in str(info.value) and "root:" not in str(info.value)
