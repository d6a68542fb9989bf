"""Every Python, shell and console example of README.md and docs/*.md runs as written,
and the output the documents show is what the commands print (tools/doc_examples.py
says how blocks are found and directed; `python tools/doc_examples.py --write`
regenerates the shown outputs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    path = ROOT / "tools" / "doc_examples.py"
    spec = importlib.util.spec_from_file_location("doc_examples", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("doc_examples", module)
    spec.loader.exec_module(module)
    return module


examples = _tool()
BLOCKS = [b for b in examples.all_blocks() if b.lang in examples.RUN or b.output_of]


def _param(block):
    marks = []
    if block.slow:
        marks.append(pytest.mark.slow)
    if block.not_run:
        marks.append(pytest.mark.skip(reason=f"not run: {block.not_run}"))
    if block.gpu and not torch.cuda.is_available():
        marks.append(pytest.mark.skip(reason="needs CUDA"))
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_the_documented_example_runs_as_written(block, tmp_path):
    examples.prepare(tmp_path, block)
    if block.output_of:
        shown = block.code.splitlines()
        real = examples.output_of(block, tmp_path)
        assert examples.same_output(shown, real, block.varies), "\n".join(real)
    elif block.lang == "python":
        examples.run_python(block, tmp_path)
    elif block.lang == "console":
        outputs = examples.console_outputs(block, tmp_path)
        for (command, shown), real in zip(examples.console_commands(block), outputs, strict=True):
            assert examples.same_output(shown, real, block.varies), (
                f"{block.id}: `{command}` printed\n" + "\n".join(real)
            )
    else:
        examples.run_shell(block, tmp_path)


def test_every_example_is_run_or_says_why_not():
    """A runnable block is run in the default or the slow step; one that is not says why;
    a directive the tool cannot read fails at collection (examples.blocks)."""
    assert len(BLOCKS) > 50
    for block in BLOCKS:
        assert block.runs or block.not_run.strip(), block.id


def test_a_console_block_compares_output_line_by_line(tmp_path):
    """The comparison the test relies on: it fails on a changed line, `...` stands for any
    lines, and numbers vary only in the lines named."""
    same = examples.same_output
    assert same(["a 1", "...", "z"], ["a 1", "b", "c", "z"], ())
    assert not same(["a 1", "z"], ["a 2", "z"], ())
    assert same(["latency 1.0 s", "z"], ["latency 2.5 s", "z"], ("latency",))
    assert not same(["latency 1.0 s", "z"], ["latency 2.5 s", "y"], ("latency",))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- example: varies: s -->\n```console\n$ echo 1; echo 2\n1\n3\n```\n")
    (block,) = examples.blocks(doc, tmp_path)
    ((_, shown),) = examples.console_commands(block)
    assert examples.console_outputs(block, tmp_path) == [["1", "2"]]
    assert not same(shown, ["1", "2"], block.varies)
    base = tmp_path / "runs"
    base.mkdir()
    assert examples.regenerate(doc, base, tmp_path)
    assert doc.read_text().splitlines()[3:5] == ["1", "2"]
