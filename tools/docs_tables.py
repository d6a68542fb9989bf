"""Print the documentation's generated tables in Markdown: options and bundled
architectures (README.md), task heads (docs/models.md).

    python tools/docs_tables.py options
    python tools/docs_tables.py architectures
    python tools/docs_tables.py heads
    python tools/docs_tables.py --write      # update every table in place

tests/test_docs.py checks that the files hold exactly what this prints, so the
documentation cannot drift from the option registry, the head table and the bundled files.
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


def heads_table() -> str:
    from stcnnt_dsl.language.heads import HEAD_KINDS

    rows = ["| kind | key | default | meaning |", "|---|---|---|---|"]
    for kind, spec in HEAD_KINDS.items():
        choices = "; ".join(f"`{name}`: {text}" for name, text in spec.choices.items())
        default = format_value(spec.keys[spec.choice].default)
        rows.append(f"| `{kind}` ({spec.help}) | `{spec.choice}` | `{default}` | {choices} |")
        for key, info in spec.keys.items():
            if key == spec.choice:
                continue
            default = "required" if key == spec.size else format_value(info.default)
            default = default if key == spec.size or info.default is not None else "derived"
            used = f" ({', '.join(info.used_by)} only)" if info.used_by else ""
            rows.append(f"| | `{key}` | `{default}` | {info.help}{used} |")
    return "\n".join(rows)


ROOT = Path(__file__).resolve().parents[1]
TABLES = {  # name -> (file, table)
    "options": (ROOT / "README.md", options_table),
    "architectures": (ROOT / "README.md", architectures_table),
    "heads": (ROOT / "docs" / "models.md", heads_table),
}


def write_tables() -> None:
    """Replace every generated table in its file."""
    for name, (path, table) in TABLES.items():
        text = path.read_text(encoding="utf-8")
        start, end = f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        path.write_text(f"{head}{start}\n{table()}\n{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "options"
    if which == "--write":
        write_tables()
    else:
        print(TABLES[which][1]())
