"""Print the README's generated tables (options, bundled architectures) in Markdown.

    python tools/docs_tables.py options
    python tools/docs_tables.py architectures
    python tools/docs_tables.py --write      # update both tables in README.md

tests/test_docs.py checks that README.md holds exactly what this prints, so the
documentation cannot drift from the option registry and the bundled files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stcnnt_dsl.language.options import CELL_KINDS, OPTIONS, format_value


def options_table() -> str:
    rows = ["| option | default | applies to | where | meaning |", "|---|---|---|---|---|"]
    for opt in OPTIONS.values():
        kinds = ", ".join(k for k in CELL_KINDS if k in opt.applies_to)
        if opt.applies_to == frozenset(CELL_KINDS):
            kinds = "all cells"
        if opt.mixer_only:
            kinds += " (with a mixer)" if opt.name != "activation" else " (L/G/T/V with a mixer)"
        if opt.name == "input_size":
            where = "top level of a spec; `Block(input_size=...)`"
        elif opt.level == "block":
            where = "defaults, topology, stage"
        else:
            where = "defaults, topology, stage, inline"
        rows.append(
            f"| `{opt.name}` | `{format_value(opt.default)}` | {kinds} | {where} | {opt.help} |"
        )
    return "\n".join(rows)


def architectures_table() -> str:
    import stcnnt_dsl
    from stcnnt_dsl.graph import build_graph

    rows = ["| name | params | accepts | description |", "|---|---|---|---|"]
    for name in stcnnt_dsl.list_architectures():
        model = stcnnt_dsl.build(name, seed=0)
        params = sum(p.numel() for p in model.parameters())
        rule = build_graph(name).rule()
        mh, mw = rule.multiple
        sizes = f"H, W multiples of {mh}" if mh == mw else f"H multiple of {mh}, W of {mw}"
        if rule.exact:
            sizes = f"exactly {rule.exact[0]}x{rule.exact[1]}"
        frames = f"T >= {rule.min_frames}" if rule.min_frames > 1 else "any T"
        spec = model.spec
        rows.append(
            f"| `{name}` | {params:,} | {spec.in_channels} channel(s), {sizes}, {frames} "
            f"| {spec.description} |"
        )
    return "\n".join(rows)


README = Path(__file__).resolve().parents[1] / "README.md"


def write_readme(path: Path = README) -> None:
    """Replace both generated tables in README.md."""
    text = path.read_text(encoding="utf-8")
    for name, table in (("options", options_table()), ("architectures", architectures_table())):
        start, end = f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{table}\n{end}{tail}"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "options"
    if which == "--write":
        write_readme()
    else:
        print(options_table() if which == "options" else architectures_table())
