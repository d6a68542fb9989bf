"""The documented examples: every fenced Python, shell and console block of README.md and
docs/*.md (docs/errors.md excepted: `tests/test_errors.py` writes it from its own cases).

tests/test_doc_examples.py runs each block as written; this tool also rewrites the
output the documents show from the real commands, so they cannot drift:

    python tools/doc_examples.py              # list the blocks and how each is run
    python tools/doc_examples.py --write      # regenerate the shown outputs in place
    python tools/doc_examples.py --write README.md docs/cli.md
    python tools/doc_examples.py --write --slow   # also the outputs of slow blocks

How a block is run:
- ```python: executed in a fresh namespace, in an empty folder. An expression statement
  followed by a comment that is a Python literal (`result.inputs  # {'input': ...}`)
  must evaluate to that literal (a torch.Size compares as a list).
- ```bash (or sh, shell): run by bash, stopping at the first failing command.
- ```console: every `$ command` (with `\\` continuation lines) runs in one bash session;
  the lines after it, up to the next `$`, are its output (stdout and stderr) and must be
  what the command prints. A line `...` stands for any number of lines.
- a block without a language is not run, except under `output of` (below).

An HTML comment on the line before the fence directs it (`;` between directives):
- `<!-- example: slow -->`: runs only with `pytest -m slow` (minutes of work);
- `<!-- example: gpu -->`: needs CUDA;
- `<!-- example: not run: REASON -->`: never run (torchrun on 8 GPUs, pip from PyPI,
  another repository); REASON is shown in the listing and the test report;
- `<!-- example: given CODE -->`: Python run first, in the block's namespace or (shell)
  with `python -c` in its folder: the `x`, `model` or files that the prose says the
  reader already has;
- `<!-- example: varies: WORD, WORD -->`: in output lines that contain a WORD, numbers
  may differ (timings, memory growth, rounding noise);
- `<!-- example: output of: CODE -->` (a block without a language): the block is what
  running the Python CODE (with `stcnnt_dsl` imported) prints, or `ErrorName: message`
  when it raises STCNNTError;
- `<!-- example: file NAME -->` (any block, e.g. YAML): written to NAME in the folder of
  every example of the same document.
Every example runs in its own empty folder that also holds links to the repository's
top-level entries (examples/, tools/, architectures/, ...), so paths written relative to a
checkout work. Shell lines that start with `pip install` are not run: the examples run in
the installed environment (CI's fresh environment checks the installs: .ci/run).
A new block in any of these files is picked up without further registration.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELLS = ("bash", "sh", "shell")
RUN = ("python", "console", *SHELLS)
_DIRECTIVE = re.compile(r"^\s*<!--\s*example:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_SPLIT = re.compile(r";\s*(?=slow\b|gpu\b|not run:|given |varies:|output of:|file )")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")


@dataclass
class Block:
    """One fenced block: where it is, its language and text, and its directives."""

    file: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    indent: str = ""
    end: int = 0  # line of the closing fence, 1-based
    slow: bool = False
    gpu: bool = False
    not_run: str = ""
    given: str = ""
    varies: tuple[str, ...] = ()
    output_of: str = ""
    file_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def runs(self) -> bool:
        return not self.not_run and (self.lang in RUN or bool(self.output_of))


def prepare(folder: Path, block: Block, root: Path = ROOT) -> Path:
    """`folder` made ready for `block`: links to the checkout's top-level entries and the
    document's `file` blocks."""
    for entry in root.iterdir():
        if not entry.name.startswith(".") and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry)
    for other in blocks(root / block.file, root):
        if other.file_name:
            target = folder / other.file_name
            if target.is_symlink():
                target.unlink()
            target.write_text(other.code + "\n")
    return folder


def documents(root: Path = ROOT) -> list[Path]:
    docs = sorted((root / "docs").glob("*.md"))
    return [root / "README.md", *(p for p in docs if p.name != "errors.md")]


def _directives(block: Block, text: str) -> None:
    for part in (p.strip() for p in _SPLIT.split(text)):
        key, _, value = part.partition(":")
        key, value = key.strip(), value.strip()
        if part == "slow":
            block.slow = True
        elif part == "gpu":
            block.gpu = True
        elif key == "not run" and value:
            block.not_run = value
        elif part.startswith("given "):
            block.given = part[len("given ") :]
        elif key == "varies" and value:
            block.varies = tuple(w.strip() for w in value.split(",") if w.strip())
        elif key == "output of" and value:
            block.output_of = value
        elif part.startswith("file ") and "/" not in part:
            block.file_name = part[len("file ") :].strip()
        else:
            raise ValueError(f"{block.id}: cannot read the example directive {part!r}")


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of one Markdown file, with the directive before it."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.groups()
        j = i + 1
        while not lines[j].strip().startswith("```"):
            j += 1
        code = "\n".join(line[len(indent) :] for line in lines[i + 1 : j])
        block = Block(str(path.relative_to(root)), i + 1, lang, code, indent, j + 1)
        directive = _DIRECTIVE.match(lines[i - 1]) if i else None
        if directive:
            _directives(block, directive.group(1))
        found.append(block)
        i = j + 1
    return found


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [b for path in documents(root) for b in blocks(path, root)]


# ------------------------------------------------------------------------ running


@contextlib.contextmanager
def _inside(folder: Path):
    """The working directory set to `folder` (contextlib.chdir needs Python 3.11)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("COLUMNS", "200")
    return env


def _literal(comment: str):
    if "..." in comment:  # a sketch of the value, not the value
        return _literal.NONE
    try:
        return ast.literal_eval(comment)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return _literal.NONE


_literal.NONE = object()  # type: ignore[attr-defined]


def _comparable(value):
    import torch

    if isinstance(value, torch.Size | tuple):
        return [_comparable(v) for v in value]
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def run_python(block: Block, folder: Path) -> None:
    """Execute the block; check every `expression  # literal` it shows."""
    source = block.code
    tree = ast.parse(source, filename=block.id)
    lines = source.splitlines()
    namespace: dict = {"__name__": "__doc_example__"}
    with _inside(folder):
        if block.given:
            exec(compile(block.given, f"{block.id} (given)", "exec"), namespace)
        for node in tree.body:
            code = compile(ast.Module([node], []), block.id, "exec")
            if not isinstance(node, ast.Expr) or node.end_lineno != node.lineno:
                exec(code, namespace)
                continue
            line = lines[node.lineno - 1]
            comment = line[node.end_col_offset :].strip()
            value = eval(compile(ast.Expression(node.value), block.id, "eval"), namespace)
            if not comment.startswith("#"):
                continue
            want = _literal(comment[1:].strip())
            if want is not _literal.NONE and _comparable(value) != _comparable(want):
                raise AssertionError(
                    f"{block.file}:{block.line + node.lineno}: {line.strip()!r} gives {value!r}"
                )


def _given_shell(block: Block) -> str:
    if not block.given:
        return ""
    return f"python -c {_quote(block.given)}\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _without_installs(code: str) -> str:
    return "\n".join(
        ": " if line.lstrip().startswith("pip install") else line for line in code.splitlines()
    )


def run_shell(block: Block, folder: Path, timeout: float = 1800) -> None:
    script = "set -e -o pipefail\n" + _given_shell(block) + _without_installs(block.code)
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise AssertionError(
            f"{block.id} exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


def console_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, shown output lines) for each `$` line of a console block."""
    out: list[tuple[str, list[str]]] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            raise ValueError(f"{block.id}: console output before any `$ ` command")
        command = [line[2:]]
        while command[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            command.append(lines[i])
        i += 1
        shown = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        out.append(("\n".join(command), shown))
    return out


_MARK = "@@stcnnt-doc-example@@"


def console_outputs(block: Block, folder: Path, timeout: float = 1800) -> list[list[str]]:
    """What each command of a console block prints, run in one bash session."""
    commands = console_commands(block)
    script = ["exec 2>&1", _given_shell(block)]
    for command, _ in commands:  # the mark keeps $? for a shown `echo $?`
        script += [f"status=$?; echo {_MARK}; (exit $status)", command]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    parts = done.stdout.split(_MARK + "\n")[1:]
    if len(parts) != len(commands):
        raise AssertionError(f"{block.id}: the commands did not all run:\n{done.stdout}")
    return [part.rstrip("\n").splitlines() for part in parts]


def _masked(line: str, varies: tuple[str, ...]) -> str:
    line = line.rstrip()
    if any(word in line for word in varies):
        return _NUMBER.sub("#", line)
    return line


def _trimmed(lines: list[str]) -> list[str]:
    """Without the blank lines that separate a shown output from the next command."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def same_output(shown: list[str], real: list[str], varies: tuple[str, ...]) -> bool:
    """Whether `real` is what `shown` shows: line by line, `...` for any lines, numbers
    free in lines with a `varies` word."""
    shown = [_masked(s, varies) for s in _trimmed(shown)]
    real = [_masked(r, varies) for r in real]

    def match(i: int, j: int) -> bool:
        if i == len(shown):
            return j == len(real)
        if shown[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(real) + 1))
        return j < len(real) and shown[i] == real[j] and match(i + 1, j + 1)

    return match(0, 0)


def output_of(block: Block, folder: Path) -> list[str]:
    """What the block's `output of` code prints, or the STCNNTError it raises."""
    import stcnnt_dsl
    from stcnnt_dsl.errors import STCNNTError

    buffer = io.StringIO()
    namespace: dict = {"__name__": "__doc_example__", "stcnnt_dsl": stcnnt_dsl}
    with _inside(folder), contextlib.redirect_stdout(buffer):
        try:
            exec(compile(block.output_of, f"{block.id} (output of)", "exec"), namespace)
        except STCNNTError as err:
            print(f"{type(err).__name__}: {err}")
    return buffer.getvalue().rstrip("\n").splitlines()


# ------------------------------------------------------------------------ writing


def regenerate(path: Path, base: Path, root: Path = ROOT) -> bool:
    """Rewrite the shown outputs of `path` from the real commands; True if it changed.
    A `...` line in a shown output keeps its place: the lines before it are written, the
    rest elided."""
    text = path.read_text()
    lines = text.splitlines()
    changed = False
    for block in reversed(blocks(path, root)):
        if block.not_run or (block.slow and "--slow" not in sys.argv):
            continue
        folder = Path(tempfile.mkdtemp(dir=base))
        prepare(folder, block, root)
        if block.output_of:
            new = output_of(block, folder)
        elif block.lang == "console":
            new = []
            commands = console_commands(block)
            for (command, shown), real in zip(
                commands, console_outputs(block, folder), strict=True
            ):
                new += ["$ " + command.splitlines()[0], *command.splitlines()[1:]]
                gap = shown[len(_trimmed(shown)) :]
                if same_output(shown, real, block.varies):
                    new += shown
                    continue
                elif any(s.strip() == "..." for s in shown):
                    keep = next(i for i, s in enumerate(shown) if s.strip() == "...")
                    new += [*real[:keep], shown[keep]] if keep < len(real) else real
                else:
                    new += real
                new += gap
        else:
            continue
        new = [block.indent + line if line else line for line in new]
        if lines[block.line : block.end - 1] != new:
            lines[block.line : block.end - 1] = new
            changed = True
    if changed:
        path.write_text("\n".join(lines) + text[len(text.rstrip("\n")) :])
    return changed


def main(argv: list[str]) -> int:
    if "--write" not in argv:
        for block in all_blocks():
            how = (
                f"not run: {block.not_run}"
                if block.not_run
                else ("output of" if block.output_of else block.lang or "-")
                + (" (slow)" if block.slow else "")
                + (" (gpu)" if block.gpu else "")
            )
            print(f"{block.id:28} {how}")
        return 0
    names = [a for a in argv if not a.startswith("--")]
    paths = [ROOT / n for n in names] if names else documents()
    for path in paths:
        with tempfile.TemporaryDirectory() as folder:
            try:
                if regenerate(path, Path(folder), ROOT):
                    print(f"updated {path.relative_to(ROOT)}")
            except Exception:
                traceback.print_exc()
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
