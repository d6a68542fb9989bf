"""The package's layering: data flows one way, language -> graph -> nn -> models -> tools,
with no import cycles and no imports hidden inside functions to dodge them.

Read from the source (the AST of every module), so a new import that breaks the rule
fails here, whether or not it is executed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stcnnt_dsl"

# The layers, lowest first; a module may import its own layer and the ones below.
LAYERS = {
    "base": ("errors", "registry", "_version", "_lazy", "machine", "units"),
    "language": ("language",),
    "graph": ("graph",),
    "nn": ("nn",),
    "models": ("models",),
    "tools": ("tools", "compat", "adapt", "export"),
    # the applications on top: imaging data, then training and planning, then the
    # command line, the studio and the package's front door
    "data": ("data",),
    "train": ("train", "planner"),
    "apps": ("studio", "cli", "__init__"),
}
# Modules that import our torch-based modules inside functions, so that the commands and
# pages that need no torch (`stcnnt check`, the studio's analysis) start without it. A
# known debt (issue 20): these imports belong at the top, behind `_lazy`'s closed table.
LAZY_IMPORTERS = ("cli", "data", "train", "planner", "studio")
ORDER = list(LAYERS)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str:
    head = module.split(".")[0]
    for layer, heads in LAYERS.items():
        if head in heads:
            return layer
    raise AssertionError(f"module {module} is in no layer: add it to LAYERS")


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, *(node.module.split(".") if node.module else [])])


def _imports() -> dict[str, list[tuple[str, bool, int]]]:
    """module -> [(imported stcnnt_dsl module or 'torch', inside a function, line)]."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = []
        functions = [
            n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            inside = id(node) in nested
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    name = node.module or ""
                    if name.startswith("stcnnt_dsl"):
                        found.append(
                            (name.removeprefix("stcnnt_dsl").lstrip("."), inside, node.lineno)
                        )
                    elif name.split(".")[0] == "torch":
                        found.append(("torch", inside, node.lineno))
                    continue
                target = _resolve(module, node, path.name == "__init__.py")
                found.append((target, inside, node.lineno))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "torch":
                        found.append(("torch", inside, node.lineno))
                    elif alias.name.startswith("stcnnt_dsl"):
                        target = alias.name.removeprefix("stcnnt_dsl").lstrip(".")
                        found.append((target, inside, node.lineno))
        out[module] = found
    return out


IMPORTS = _imports()


def test_no_import_of_our_modules_inside_functions():
    hidden = [
        f"{module}:{line} imports {target}"
        for module, found in IMPORTS.items()
        for target, inside, line in found
        if inside and target != "torch" and module.split(".")[0] not in LAZY_IMPORTERS
    ]
    assert not hidden, hidden


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, found in IMPORTS.items():
        mine = ORDER.index(_layer(module))
        for target, _, line in found:
            if target in ("torch", ""):
                continue
            if ORDER.index(_layer(target)) > mine:
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("layer", ["base", "language", "graph"])
def test_the_language_and_the_graph_need_no_torch(layer):
    users = [
        f"{module}:{line}"
        for module, found in IMPORTS.items()
        if _layer(module) == layer
        for target, _, line in found
        if target == "torch"
    ]
    assert not users, users


def test_the_layers_of_nn_import_nothing_from_the_language_or_the_graph():
    """Attention, cells, norms, sampling, heads are plain torch modules built from
    plain arguments (as timm's layers): no module of `nn` reads the language or the
    graph; `stcnnt_dsl.models.cells` translates a cell's geometry into arguments."""
    wrong = [
        f"{module}:{line} imports {target}"
        for module, found in IMPORTS.items()
        if module == "nn" or module.startswith("nn.")
        for target, _, line in found
        if target not in ("torch", "") and _layer(target) in ("language", "graph", "models")
    ]
    assert not wrong, wrong


def test_nn_names_the_block_defined_above_it():
    """`stcnnt_dsl.nn.Block` (the contract's name) reads block strings, so it is
    defined above the layers and named by the nn package through `_lazy`'s table."""
    import stcnnt_dsl.nn
    from stcnnt_dsl.models.block import Block

    assert stcnnt_dsl.nn.Block is Block
    assert "Block" in dir(stcnnt_dsl.nn)
    with pytest.raises(AttributeError):
        stcnnt_dsl.nn.build  # noqa: B018 - the top-level names are not nn's


def test_no_import_cycles():
    graph = {
        module: {t for t, _, _ in found if t not in ("torch", "") and t in IMPORTS}
        for module, found in IMPORTS.items()
    }
    # a package's __init__ re-exports its modules: edges into it are edges to them
    seen: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> None:
        if module in stack:
            cycle = [*stack[stack.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in seen:
            return
        stack.append(module)
        for target in sorted(graph[module]):
            if target.startswith(module + ".") and _is_package(module):
                continue  # a package importing its own submodule
            visit(target)
        stack.pop()
        seen.add(module)

    for module in sorted(graph):
        visit(module)


def _is_package(module: str) -> bool:
    return (PACKAGE / module.replace(".", "/") / "__init__.py").exists()


def test_importing_the_graph_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import stcnnt_dsl.graph as g; g.build_graph('unet'); "
        "g.check('hrnet', (1, 2, 1, 64, 64)); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "torch was imported"


def test_lazy_loading_is_one_closed_table():
    """`stcnnt_dsl._lazy` loads the torch-based names of the package on first use (so the
    graph tools start without torch); nothing else imports by name at run time."""
    users = sorted(
        _module_name(path)
        for path in PACKAGE.rglob("*.py")
        if "import_module(" in path.read_text(encoding="utf-8")
    )
    # besides: the data extra's optional libraries (`data._deps.need`, literal names in
    # the package's code) and a registered kind's "module:Name" reference (`registry`,
    # given in Python by whoever registers it; specs only pick registered names)
    assert users == ["_lazy", "data._deps", "registry"], users
    tree = ast.parse((PACKAGE / "_lazy.py").read_text(encoding="utf-8"))
    table = next(
        n.value for n in tree.body
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "TORCH_NAMES"
    )  # fmt: skip
    assert all(isinstance(v, ast.Constant) for v in (*table.keys, *table.values))
