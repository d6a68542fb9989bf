"""The `stcnnt` command: check, build, profile, graph, explain, schema, export, list,
import-reference, studio, data inspect, evaluate, predict, train, plan, tune.

Exit status: 0 on success; 2 on a user error (bad option, file, syntax, spec or shape),
with one message on stderr and no traceback; 1 only for a bug (an internal error, shown
with its traceback so it can be reported). With `--json`, stdout holds exactly one JSON
document (on a user error: `{"ok": false, "error": {...}}`).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import stcnnt_dsl as api  # its torch-based names load on first use: `check` needs no torch

from . import compat
from ._version import __version__
from .errors import DSLSyntaxError, ShapeError, SpecError, STCNNTError, WeightsError
from .graph import build_graph, check, describe_rule, guard, infer_shapes, parse_shape
from .graph.shapes import LAYOUT_AXES, to_btchw
from .language.spec import list_architectures, load_source, spec_json_schema
from .registry import list_kinds
from .studio import server as studio_server
from .tools.diagram import GraphvizMissingWarning, render_graph, to_dot
from .tools.explain import explain
from .units import human, human_bytes

__all__ = ["main"]

ISSUES_URL = "the stcnnt-dsl issue tracker"
ARCH_HELP = (
    "the architecture: a bundled name (see `stcnnt list`), a .yaml/.yml/.json file, or a "
    "one-line expression such as 'unet(channels=[32,64], blocks=T1L1G1)'"
)
INPUT_HELP = "input shape B,T,C,H,W (T = frames, slices, or 1 for 2D), e.g. 1,16,1,256,256"


class UsageError(Exception):
    """A command line argparse rejects (exit 2)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


# --------------------------------------------------------------------------- output


def _emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines on stderr, only when a person is watching it."""
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        return lambda _message: None

    def say(message: str) -> None:
        sys.stderr.write(f"\r\033[K{message} ...")
        sys.stderr.flush()

    return say


def _clear_progress(args: argparse.Namespace) -> None:
    if not getattr(args, "quiet", False) and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _shape_text(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape))


def _input_shape(args: argparse.Namespace) -> tuple[int, ...] | None:
    return None if args.input is None else parse_shape(args.input)


# --------------------------------------------------------------------------- commands


def _arch(args: argparse.Namespace, attr: str = "arch") -> Any:
    """The ARCH argument; `-` reads the architecture text from stdin."""
    value = getattr(args, attr)
    if value == "-":
        return load_source(sys.stdin.read(), read_files=False)
    return value


def _cmd_check(args: argparse.Namespace) -> int:
    layout = args.layout
    shape = None if args.input is None else to_btchw(args.input, layout)
    graph = build_graph(_arch(args))
    estimate = guard(graph)  # absurd sizes are refused before anything else
    valid = _valid_inputs(graph.rule())
    valid["text"] = api.accepts(graph, layout=layout).text
    shapes = infer_shapes(graph, args.input, layout=layout) if shape is not None else None
    if shape is not None:
        check(graph, args.input, layout=layout)
    if args.json:
        _emit_json({
            "ok": True,
            "name": graph.name,
            "topology": graph.topology,
            "parameters": estimate.params,
            "valid_inputs": valid,
            "input": shape,
            "output": None if shapes is None else shapes["output"],
            "stages": None if shapes is None else shapes["stages"],
        })  # fmt: skip
        return 0
    cells = sum(len(p.cells) for p in graph.block_plans())
    print(
        f"ok: {graph.name} ({graph.topology}) is valid: {len(graph.stages)} stages, "
        f"{cells} cells, {estimate.params:,} parameters"
    )
    print(f"accepts: {valid['text']}")
    if shapes is not None:
        print(f"runs on {_shape_text(shape)} -> output {_shape_text(shapes['output'])}")
    return 0


def _valid_inputs(rule: Any) -> dict[str, Any]:
    """The model's valid input sizes, in words and as numbers: `minimum` is the smallest
    valid H and W (a multiple of `multiple`)."""
    mh, mw = rule.multiple
    smallest = [max(m, -(-rule.minimum // m) * m) for m in (mh, mw)]
    if rule.exact is not None:
        smallest = list(rule.exact)
    return {
        "multiple": [mh, mw],
        "minimum": smallest,
        "min_frames": rule.min_frames,
        "frames_multiple": rule.frames_multiple,
        "exact": None if rule.exact is None else list(rule.exact),
        "text": describe_rule(rule),
    }


def _stage_rows(model: Any) -> list[dict[str, Any]]:
    """One row per stage (and per head of a whole model)."""
    graph = model.graph
    rows = []
    for node in (*graph.stages, *graph.heads):
        module = model.get_submodule(graph.module_path(node))
        rows.append({
            "key": node.name,
            "module": graph.module_path(node),
            "label": node.label,
            "block": str(node.plan.block) if hasattr(node, "plan") else node.label,
            "in_channels": getattr(node, "in_channels", getattr(node, "backbone_channels", 0)),
            "out_channels": node.out_channels,
            "scale": node.scale,
            "parameters": sum(p.numel() for p in module.parameters()),
        })  # fmt: skip
    return rows


def _cmd_build(args: argparse.Namespace) -> int:
    say = _progress(args)
    shape = _input_shape(args)
    if args.out:
        _check_out(Path(args.out))  # before the work, not after it
    say("building")
    model = api.build(_arch(args), seed=args.seed, in_channels=args.in_channels)
    backbone = getattr(model, "backbone", model)  # a whole model's trunk, or the model
    total = sum(p.numel() for p in model.parameters())
    stages = _stage_rows(model)
    in_stages = sum(s["parameters"] for s in stages)
    shapes = infer_shapes(model.graph, shape) if shape is not None else None
    saved = graph = None
    if args.out:
        say(f"writing {args.out}")
        saved = api.save_model(model, args.out)
    if args.graph:
        say(f"drawing {args.graph}")
        graph = _render(model, args.graph, args.detail, shape)
    _clear_progress(args)
    if args.json:
        _emit_json({
            "ok": True,
            "name": model.spec.name,
            "topology": model.spec.topology,
            "in_channels": model.in_channels,
            "out_channels": backbone.out_channels,
            "heads": {h.head_name: h.task for h in model.graph.heads},
            "parameters": total,
            "stages": [
                {**s, "output": None if shapes is None else shapes["nodes"][s["key"]]}
                for s in stages
            ],
            "other_parameters": total - in_stages,
            "feature_info": model.feature_info,
            "input": shape,
            "output": None if shapes is None else shapes["output"],
            "features": None if shapes is None else shapes["features"],
            "head_outputs": None if shapes is None else shapes["heads"],
            "weights": None if saved is None else str(saved),
            "graph": graph,
        })  # fmt: skip
        return 0
    spec = model.spec
    print(f"{spec.name} ({spec.topology})" + (f": {spec.description}" if spec.description else ""))
    print(f"  parameters: {total:,} ({human(total)}); {model.in_channels} -> "
          f"{backbone.out_channels} channels")  # fmt: skip
    header = ["stage", "block", "channels", "scale", "parameters"]
    if shapes is not None:
        header.append("output")
    rows = [header]
    for s in stages:
        row = [s["key"], s["block"], f"{s['in_channels']} -> {s['out_channels']}",
               f"1/{s['scale']}", f"{s['parameters']:,}"]  # fmt: skip
        if shapes is not None:
            row.append(_shape_text(shapes["nodes"][s["key"]]))
        rows.append(row)
    rows.append(["(between stages)", "resampling, gates, fusion", "", "",
                 f"{total - in_stages:,}"] + ([""] if shapes is not None else []))  # fmt: skip
    print(_table(rows, right={4}))
    if shapes is not None:
        print(f"  output: {_shape_text(shapes['output'])}")
        for name, head_shape in shapes["heads"].items():
            print(f"  head {name}: {_shape_text(head_shape)}")
        for info, feat in zip(model.feature_info, shapes["features"], strict=True):
            print(f"  feature {info['module']}: {_shape_text(feat)} "
                  f"(1/{info['reduction']} resolution)")  # fmt: skip
    if saved is not None:
        size = Path(saved).stat().st_size
        print(f"  saved weights and spec to {saved} ({human_bytes(size)}); "
              "load with stcnnt_dsl.load_model(path)")  # fmt: skip
    if graph is not None:
        print(f"  diagram: {graph['path']}")
    return 0


def _check_out(path: Path) -> None:
    if path.is_dir():
        raise STCNNTError(f"--out {path}: it is a folder; give a file name ending in .safetensors")
    if path.suffix.lower() != ".safetensors":
        raise STCNNTError(
            f"--out {path}: weights are written as safetensors; end the file name in .safetensors"
        )
    if not path.parent.exists():
        raise STCNNTError(f"--out {path}: the folder {path.parent} does not exist")


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, row in enumerate(rows):
        cells = [
            v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(row)
        ]
        out.append("  " + "  ".join(cells).rstrip())
        if k == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _cmd_profile(args: argparse.Namespace) -> int:
    arch = _arch(args) if args.arch is not None else "unet"
    graph = build_graph(arch)
    shape = _input_shape(args)
    defaulted = shape is None
    if shape is None:
        shape = graph.default_input()
        note = (f"no --input given: profiling {_shape_text(shape)}, the smallest input "
                f"{graph.name} accepts; pass --input B,T,C,H,W")  # fmt: skip
        print(f"stcnnt profile: {note}", file=sys.stderr)
    say = _progress(args)
    report = api.profile(
        graph,
        shape,
        device=args.device,
        dtype=args.dtype,
        runs=args.runs,
        warmup=args.warmup,
        flop_counter=args.flop_counter,
        layers=args.layers,
        progress=say,
    )
    _clear_progress(args)
    if args.json:
        data = report.to_dict()
        if not args.layers:
            data.pop("layer_table", None)
        _emit_json({"ok": True, "input_defaulted": defaulted, **data})
        return 0
    print(report.format(detail=args.detail))
    if args.layers:
        print()
        print(report.layer_table)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .tools.tune import TUNE_INPUT, tune  # torch loads for this command only

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shape = parse_shape(args.input) if args.input else TUNE_INPUT
    result = tune(args.arch, shape, repeats=args.repeats, write=not args.dry_run,
                  progress=_progress(args))  # fmt: skip
    _clear_progress(args)
    if args.json:
        _emit_json({"ok": True, "machine": result.key, "choices": dataclasses.asdict(result.chosen),
                    "rules": dataclasses.asdict(result.rules), "reasons": result.reasons,
                    "measured_ms": result.measured_ms, "path": result.path})  # fmt: skip
    else:
        print(result.format())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    arch = _arch(args)
    if isinstance(arch, str) and arch.endswith(".safetensors"):
        arch = api.load_model(arch)  # trained weights, from `stcnnt build --out`
    result = api.export(arch, args.output, args.input, format=args.format)
    if args.json:
        _emit_json({"ok": True, **result.to_dict()})
        return 0
    size = result.path.stat().st_size / 2**20
    print(f"wrote {result.path} ({result.format}, {size:.1f} MiB)")
    for kind, values in (("input", result.inputs), ("output", result.outputs)):
        for name, dims in values.items():
            print(f"  {kind} {name!r}: [{', '.join(map(str, dims))}]")
    print(f"  accepts: {result.valid_sizes}")
    print(f"  ONNX Runtime matches PyTorch on {_shape_text(result.input_shape)} "
          f"(max relative difference {result.relative_error:.1e})")  # fmt: skip
    return 0


def _render(source: Any, path: str, detail: str, shape: Any) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GraphvizMissingWarning)
        written = render_graph(source, path, detail=detail, input_shape=shape)
    for warning in caught:
        if issubclass(warning.category, GraphvizMissingWarning):
            print(f"stcnnt: warning: {warning.message}", file=sys.stderr)
    rendered = Path(written) == Path(path)
    return {"path": str(written), "requested": str(path), "rendered": rendered}


def _cmd_graph(args: argparse.Namespace) -> int:
    shape = _input_shape(args)
    arch = _arch(args)
    if args.output == "-":
        sys.stdout.write(to_dot(arch, detail=args.detail, input_shape=shape))
        return 0
    say = _progress(args)
    say(f"drawing {args.output}")
    result = _render(arch, args.output, args.detail, shape)
    _clear_progress(args)
    if args.json:
        _emit_json({"ok": True, **result, "detail": args.detail})
    elif result["rendered"]:
        print(f"wrote {result['path']}")
    else:
        print(f"wrote {result['path']} (DOT source; {args.output} needs Graphviz)")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    text = args.text
    if text == "-":
        text = sys.stdin.read()
        if not _looks_like_block(text):
            text = load_source(text, read_files=False)
    result = explain(text, stage=args.stage)
    if args.json:
        _emit_json({"ok": True, **result.to_dict()})
    else:
        print(result.format(columns=args.columns))
    return 0


def _looks_like_block(text: str) -> bool:
    """A one-line text that starts like a block string (stdin may hold either)."""
    stripped = text.strip()
    starts = {"(", *(letter[0] for letter in list_kinds()["cells"])}
    return "\n" not in stripped and ":" not in stripped and stripped[:1] in starts


def _cmd_schema(args: argparse.Namespace) -> int:
    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if args.out:
        path = Path(args.out)
        if path.is_dir():
            raise STCNNTError(f"cannot write {path}: it is a folder; give a file name")
        if not path.parent.exists():
            raise STCNNTError(f"cannot write {path}: the folder {path.parent} does not exist")
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as err:
            raise STCNNTError(f"cannot write {path}: {err.strerror or err}") from None
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in list_architectures():
        graph = build_graph(name)
        rows.append({
            "name": name,
            "topology": graph.topology,
            "parameters": sum(graph.params().values()),
            "valid_inputs": describe_rule(graph.rule()),
            "description": graph.spec.description,
        })  # fmt: skip
    if args.json:
        _emit_json({"ok": True, "architectures": rows})
        return 0
    table = [["name", "topology", "parameters", "description"]]
    for r in rows:
        table.append([r["name"], r["topology"], human(r["parameters"]), r["description"]])
    print(_table(table, right={2}))
    return 0


def _read_config(value: str) -> Any:
    """--config: inline JSON (starts with `{`) or a JSON file."""
    if value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise STCNNTError(
                f"--config: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
            ) from None
    path = Path(value)
    if not path.is_file():
        raise STCNNTError(
            f"--config {value}: no such file; give a JSON file or inline JSON ('{{...}}')"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise STCNNTError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None


def _cmd_import_reference(args: argparse.Namespace) -> int:
    config = _read_config(args.config) if args.config else None
    if not Path(args.file).is_file():
        raise STCNNTError(f"file not found: {args.file}")
    _check_out(Path(args.out))
    say = _progress(args)
    say(f"importing {args.file}")
    try:
        model = compat.import_reference(args.file, config, part=args.part)
    except WeightsError as err:
        if config is None and "no configuration" in str(err):
            raise WeightsError(
                f"{args.file} carries no reference configuration in its metadata; give it "
                "with --config FILE (or --config '{...}')"
            ) from None
        raise
    saved = api.save_model(model, args.out)
    _clear_progress(args)
    params = sum(p.numel() for p in model.parameters())
    if args.json:
        _emit_json({"ok": True, "weights": str(saved), "name": model.spec.name,
                    "parameters": params})  # fmt: skip
    else:
        print(f"imported {args.file} as {model.spec.name} ({params:,} parameters); "
              f"wrote {saved}")  # fmt: skip
    return 0


def _cmd_studio(args: argparse.Namespace) -> int:
    return studio_server.run_studio(args)  # the handler lives with the studio


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from .data import commands, open_dataset  # the work lives in stcnnt_dsl.data

    dataset = open_dataset(args.dataset)
    fingerprint = dataset.fingerprint(quiet=args.quiet)
    if args.json:
        _emit_json({"ok": True, "dataset": str(dataset.root), **fingerprint})
    else:
        print(commands.inspect_text(fingerprint, str(dataset.root)))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import commands
    from .data.evaluate import evaluate

    report = evaluate(args.checkpoint, args.dataset, overlap=args.overlap, batch=args.batch,
                      device=args.device, quiet=args.quiet)  # fmt: skip
    if args.json:
        _emit_json({"ok": True, **report})
    else:
        print(commands.evaluate_text(report))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .data import commands
    from .data.files import predict_files

    result = predict_files(
        args.checkpoint, args.inputs, args.out, overlap=args.overlap, batch=args.batch,
        patch=args.patch,
        probabilities=args.probabilities, overwrite=args.overwrite, t_axis=args.t_axis,
        device=args.device, quiet=args.quiet,
    )  # fmt: skip
    if args.json:
        _emit_json({"ok": True, **result})
    else:
        print(commands.predict_text(result))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planner.command import run  # Optuna is loaded for --search only

    return run(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.command import run  # torch, MONAI, PEFT: loaded for this command only

    return run(args)


# --------------------------------------------------------------------------- parser


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 skips timing), got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stcnnt",
        description="ST-CNNT backbones from a declarative architecture language: validate, "
        "build, profile, draw and explain architectures.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            ARCH is a bundled name (stcnnt list), a .yaml/.yml/.json file, or an expression.
            exit status: 0 ok, 2 user error (message on stderr), 1 internal error (a bug).

            """)
        + _examples(
            "stcnnt list",
            "stcnnt check unet --input 1,16,1,256,256",
            "stcnnt profile --input 1,16,1,256,256",
            "stcnnt graph unet -o unet.svg",
            "stcnnt explain 'L1[window=4] G1 T1'",
            "stcnnt build my_arch.yaml --input 1,8,1,128,128 --out model.safetensors",
        ),
    )
    parser.add_argument("--version", action="version", version=f"stcnnt-dsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(
        name: str, short: str, help_text: str, examples: Sequence[str], func: Callable
    ) -> Any:
        p = sub.add_parser(
            name, help=short, description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=_examples(*examples),
        )  # fmt: skip
        p.set_defaults(func=func)
        return p

    p = command(
        "check",
        "validate an architecture (and an input shape)",
        "validate an architecture, and with --input check that it runs on that input shape "
        "(names the stage, cell and rule that fail, and the nearest valid sizes)",
        ["stcnnt check unet", "stcnnt check arch.yaml --input 1,16,1,256,256",
         "stcnnt check 'unet(channels=[16,32], blocks=L1G1)' --input 1,1,1,96,96 --json"],
        _cmd_check,
    )  # fmt: skip
    p.add_argument("arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--input", metavar="B,T,C,H,W", help=INPUT_HELP)
    p.add_argument(
        "--layout", default="BTCHW", type=str.upper, choices=list(LAYOUT_AXES),
        help="the axis order of --input, as in build(layout=...): BCHW for 2D images, "
        "BCHWD for MONAI volumes (default: BTCHW)",
    )  # fmt: skip
    _add_json(p)

    p = command(
        "build",
        "compile; summary, weights file, diagram",
        "compile an architecture and print a summary (parameters per stage; output and "
        "per-level shapes with --input); optionally save weights and draw a diagram",
        ["stcnnt build unet", "stcnnt build arch.yaml --input 1,16,1,256,256",
         "stcnnt build unet --out unet.safetensors --seed 0",
         "stcnnt build hrnet --graph hrnet.svg --json"],
        _cmd_build,
    )  # fmt: skip
    p.add_argument("arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--input", metavar="B,T,C,H,W", help=INPUT_HELP)
    p.add_argument("--out", metavar="FILE", help="save weights (.safetensors, spec in metadata)")
    p.add_argument("--graph", metavar="FILE", help="also draw a diagram (.svg/.png/.pdf/.dot)")
    p.add_argument("--detail", choices=("stage", "cell"), default="stage",
                   help="diagram detail for --graph (default: stage)")  # fmt: skip
    p.add_argument("--seed", type=int, help="seed for the initial weights")
    p.add_argument("--in-channels", type=int, metavar="C", help="override the input channels")
    _add_json(p)

    p = command(
        "profile",
        "FLOPs, parameters, memory, latency",
        "FLOPs (total, per stage and cell, attention included), parameters, activation "
        "memory, latency and peak memory; ARCH defaults to the bundled unet",
        ["stcnnt profile --input 1,16,1,256,256",
         "stcnnt profile hrnet --input 1,4,1,128,128 --runs 5",
         "stcnnt profile arch.yaml --input 2,8,1,256,256 --device cuda --dtype bfloat16",
         "stcnnt profile unet --input 1,16,1,256,256 --runs 0 --json   # no timing"],
        _cmd_profile,
    )  # fmt: skip
    p.add_argument("arch", metavar="ARCH", nargs="?", help=ARCH_HELP + " (default: unet)")
    p.add_argument(
        "--input",
        metavar="B,T,C,H,W",
        help=INPUT_HELP + " (default: 1,1,C,64,64 or the spec's input_size)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="run under autocast to this dtype (default: float32)",
    )
    p.add_argument(
        "--runs",
        type=_non_negative,
        metavar="N",
        help="timed forwards (default: as many as fit in ~20 s, 1 to 10; "
        "0 skips latency and peak memory)",
    )
    p.add_argument(
        "--warmup", type=_non_negative, default=1, metavar="N",
        help="untimed forwards first (default: 1)",
    )  # fmt: skip
    p.add_argument(
        "--flop-counter",
        default="auto",
        choices=("auto", "analytic", "torch", "fvcore"),
        help="analytic: the model graph's formulas (milliseconds); torch: FlopCounterMode "
        "on the meta device; fvcore: traced on real tensors; auto: analytic, cross-checked "
        "by torch when the model is built for timing (default: auto)",
    )
    p.add_argument(
        "--detail",
        choices=("stage", "cell"),
        default="cell",
        help="rows of the table (default: cell)",
    )
    p.add_argument("--layers", action="store_true", help="also print torchinfo's layer table")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    _add_json(p)  # fmt: skip

    p = command(
        "tune",
        "measure this machine's fastest layout, Q/K/V and attention kernel",
        "measure the per-machine choices (feature-map layout for training and inference, "
        "one Q/K/V convolution or three, the CPU attention kernel) with training steps and "
        "forwards of a model, interleaved, and cache them for this CPU, torch version and "
        "thread count; until then the rules hold (about a minute; see docs/performance.md)",
        ["stcnnt tune", "stcnnt tune --threads 4", "stcnnt tune --dry-run --json"],
        _cmd_tune,
    )  # fmt: skip
    p.add_argument("--arch", default="unet", metavar="ARCH",
                   help=ARCH_HELP + " to time (default: unet)")  # fmt: skip
    p.add_argument("--input", metavar="B,T,C,H,W",
                   help="input to time (default: 1,4,1,64,64)")  # fmt: skip
    p.add_argument("--repeats", type=_positive, default=5, metavar="N",
                   help="interleaved pairs per choice (default: 5)")  # fmt: skip
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="torch threads to tune for (default: torch's)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="measure, do not write the cache")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    _add_json(p)

    p = command(
        "graph",
        "draw the topology (svg, png, pdf, dot)",
        "draw the topology with Graphviz (without the dot program, writes the DOT source "
        "and says how to install Graphviz)",
        ["stcnnt graph unet -o unet.svg", "stcnnt graph hrnet -o hrnet.png --detail cell",
         "stcnnt graph arch.yaml -o arch.dot", "stcnnt graph llm -o - | dot -Tpdf -o llm.pdf"],
        _cmd_graph,
    )  # fmt: skip
    p.add_argument("arch", metavar="ARCH", help=ARCH_HELP)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="output file: .svg, .png, .pdf, .dot (or - for DOT on stdout)",
    )
    p.add_argument(
        "--detail",
        choices=("stage", "cell"),
        default="stage",
        help="stage: one box per block; cell: every cell (default: stage)",
    )
    p.add_argument("--input", metavar="B,T,C,H,W", help="label boxes with tensor sizes")
    _add_json(p)  # fmt: skip

    p = command(
        "explain",
        "every cell's options, resolved, with their sources",
        "show every cell of a block string or architecture with every option resolved "
        "and where its value came from (library default, defaults, topology, stage, inline)",
        ["stcnnt explain L1G1T1", "stcnnt explain 'L1[window=4, heads=2] G1 T1[causal=true]'",
         "stcnnt explain unet --stage bridge", "stcnnt explain arch.yaml --json"],
        _cmd_explain,
    )  # fmt: skip
    p.add_argument(
        "text",
        metavar="TEXT",
        help="a block string, or ARCH (bundled name, file, expression); - reads stdin",
    )
    p.add_argument("--stage", metavar="KEY", help="only this stage (e.g. encoder.1, bridge)")
    p.add_argument(
        "--columns", type=int, default=4, metavar="N", help="cells per table (default: 4)"
    )
    _add_json(p)  # fmt: skip

    p = command(
        "schema",
        "JSON Schema of the YAML format",
        "print the JSON Schema of the YAML architecture format (for editor validation "
        "and completion)",
        ["stcnnt schema > stcnnt.schema.json",
         "# VS Code (YAML extension): put this first in an arch file:",
         "# yaml-language-server: $schema=./stcnnt.schema.json"],
        _cmd_schema,
    )  # fmt: skip
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")

    p = command(
        "export",
        "write an ONNX file (dynamic B, T, H, W)",
        "export an architecture, or a model saved by `stcnnt build --out`, to ONNX for ONNX "
        "Runtime, with dynamic B, T, H and W within the sizes it accepts; the file is "
        "checked against PyTorch before the command returns (needs the export extra: "
        'pip install "stcnnt-dsl[export]"; see docs/export.md)',
        ["stcnnt export unet --input 1,16,1,256,256 -o unet.onnx",
         "stcnnt export trained.safetensors -o trained.onnx",
         "stcnnt export arch.yaml --format onnx -o arch.onnx --json"],
        _cmd_export,
    )  # fmt: skip
    p.add_argument("arch", metavar="ARCH", help=ARCH_HELP + ", or a .safetensors model file")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="(default: onnx)")
    p.add_argument(
        "--input",
        metavar="B,T,C,H,W",
        help=INPUT_HELP + " (in the model's layout for a saved model built with another "
        "`layout`, e.g. B,C,H,W; default: the smallest input the architecture accepts; "
        "the file takes any valid size)",
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file")
    _add_json(p)

    p = command(
        "list",
        "the bundled architectures",
        "list the bundled architectures",
        ["stcnnt list", "stcnnt list --json"],
        _cmd_list,
    )
    _add_json(p)

    p = command(
        "import-reference",
        "convert a reference (FMImaging) checkpoint",
        "convert a checkpoint of the reference implementation (FMImaging) into a "
        "stcnnt-dsl weights file",
        ["stcnnt import-reference ref_unet.safetensors --out unet.safetensors",
         "stcnnt import-reference weights.safetensors --config config.json --out m.safetensors"],
        _cmd_import_reference,
    )  # fmt: skip
    p.add_argument("file", metavar="FILE", help="reference weights (.safetensors)")
    p.add_argument("--config", metavar="FILE|JSON", help="reference configuration, a JSON "
                   "file or inline JSON (when the weights file does not carry one in its "
                   "metadata)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file")
    p.add_argument("--part", choices=["backbone"], help="import the backbone only, whatever "
                   "head the configuration names")  # fmt: skip
    _add_json(p)

    p = command(
        "studio",
        "design architectures in a local web page",
        "open the studio: a local web page to edit an architecture and see, as you type, "
        "its errors, parameters, FLOPs, memory, stages and diagram (needs the studio "
        'extra: pip install "stcnnt-dsl[studio]")',
        ["stcnnt studio", "stcnnt studio arch.yaml --port 8800",
         "stcnnt studio unet --no-browser --port 0   # any free port",
         "stcnnt studio --data Dataset001 --runs runs   # look, train, predict, export"],
        _cmd_studio,
    )  # fmt: skip
    p.add_argument("arch", metavar="ARCH", nargs="?", help=ARCH_HELP + " (the text to start from)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this computer only)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=8765,
        metavar="N",
        help="port (default: 8765; 0 picks a free one)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--data", metavar="DIR", help="a data set to look at and train on (read only)")
    p.add_argument("--runs", metavar="DIR", help="where trainings are kept (the only folder the "
                   "studio writes; default with --data: ./stcnnt-runs)")  # fmt: skip
    _data_parsers(command)

    p = command(
        "train",
        "train from a recipe (also under torchrun)",
        "train a model from a recipe (YAML: model, task, data, steps, optimizer, ...); "
        "writes DIR/last.safetensors (with the resumable state), DIR/best.safetensors, "
        "DIR/metrics.csv and the resolved DIR/recipe.yaml. The same command runs under "
        'torchrun (DDP or FSDP2). Needs the train extra: pip install "stcnnt-dsl[train]"',
        ["stcnnt train recipes/segment_2dt.yaml --out runs/seg",
         "stcnnt train recipe.yaml --out runs/seg --resume",
         "stcnnt train recipe.yaml --set optimizer.lr=3e-4 --set data.batch=4 --json",
         "torchrun --nproc_per_node 2 -m stcnnt_dsl.cli train recipe.yaml --out runs/ddp",
         "stcnnt train --schema > recipe.schema.json"],
        _cmd_train,
    )  # fmt: skip
    p.add_argument("recipe", metavar="RECIPE", nargs="?", help="the recipe (.yaml)")
    p.add_argument("--out", metavar="DIR", help="the run folder (default: runs/RECIPE_NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run in DIR")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe value (YAML), e.g. optimizer.lr=3e-4; repeatable",
    )
    p.add_argument("--schema", action="store_true", help="print the recipe's JSON Schema")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    _add_json(p)  # fmt: skip

    p = command(
        "plan",
        "architecture, patch, batch and recipe for a data set and a memory budget",
        "plan training for a data set (a folder, or a fingerprint .json from stcnnt data "
        "inspect --json): the architecture (nnU-Net's rules written for ST-CNNT, or --base "
        "kept), the largest patch and batch whose predicted training-step peak fits "
        "--memory, and a recipe for stcnnt train; --search N also searches the language "
        "for the FLOPs/memory Pareto front (Optuna)",
        ["stcnnt plan data/Dataset001_Shapes --memory 8GiB",
         "stcnnt plan data/Dataset001_Shapes --memory 2GiB --device cpu --out plans/a",
         "stcnnt plan fingerprint.json --memory 24GB --base unet --json",
         "stcnnt plan data/Dataset001_Shapes --memory 8GiB --search 200 --out plans/s"],
        _cmd_plan,
    )  # fmt: skip
    p.add_argument("dataset", metavar="DATASET", help="a data set folder or a fingerprint .json")
    p.add_argument(
        "--memory",
        required=True,
        metavar="SIZE",
        help="the budget: 8GiB, 8GB (10^9 bytes), 512MiB or bytes",
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="the device the prediction is for (default: cuda)",
    )
    p.add_argument("--base", metavar="ARCH", help="keep this architecture; fit patch and batch")
    p.add_argument("--batch", type=int, metavar="N", help="a fixed batch (default: the largest)")
    p.add_argument(
        "--search",
        type=_non_negative,
        default=0,
        metavar="N",
        help="trials of the multi-objective search (Optuna NSGA-II)",
    )
    p.add_argument(
        "--proxy",
        type=_non_negative,
        default=0,
        metavar="STEPS",
        help="with --search: also the held-out metric after STEPS training steps",
    )
    p.add_argument("--seed", type=int, default=0, help="the search's seed (default: 0)")
    p.add_argument("--out", metavar="DIR", help="write arch.yaml, recipe.yaml (and the front)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json(p)
    return parser


def _overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _patch(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected T,H,W (three whole numbers >= 1), got {text!r}")
    return values


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _data_parsers(command: Callable) -> None:
    """`data inspect`, `evaluate`, `predict` (needs the data extra; see docs/data.md)."""
    extra = ' (needs the data extra: pip install "stcnnt-dsl[data]"; see docs/data.md)'
    p = command(
        "data", "inspect a data set (nnU-Net, Decathlon, folder)",
        "data sets: `stcnnt data inspect DATASET` prints the fingerprint (cases, channels, "
        "classes and their voxel frequencies, shape, spacing, intensities)" + extra,
        ["stcnnt data inspect Dataset001_Shapes", "stcnnt data inspect data/ --json"], None,
    )  # fmt: skip
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    sub.required = True
    q = sub.add_parser("inspect", help="print the fingerprint", description="print the "
                       "fingerprint of a data set folder (or its dataset.json)")  # fmt: skip
    q.set_defaults(func=_cmd_data_inspect)
    q.add_argument("dataset", metavar="DATASET", help="data set folder or its dataset.json")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json(q)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", metavar="CHECKPOINT",
                       help="a whole model (.safetensors: stcnnt train, save_model)")  # fmt: skip
        p.add_argument("--overlap", type=_overlap, default=0.5, metavar="F",
                       help="sliding-window overlap in [0, 1) (default: 0.5)")  # fmt: skip
        p.add_argument("--batch", type=_positive, default=1, metavar="N",
                       help="windows per forward pass (default: 1)")  # fmt: skip
        p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        _add_json(p)

    p = command(
        "evaluate", "score a whole model on a data set",
        "score a whole model on a data set's cases: Dice (mean and per class) and 95% "
        "Hausdorff distance for segmentation heads, accuracy and AUC for classification "
        "heads, PSNR and SSIM for enhancement heads (as denoisers); per case and mean" + extra,
        ["stcnnt evaluate run/best.safetensors Dataset001_Shapes",
         "stcnnt evaluate model.safetensors data/ --json --overlap 0.25"], _cmd_evaluate,
    )  # fmt: skip
    model_options(p)
    p.add_argument("dataset", metavar="DATASET", help="data set folder or its dataset.json")

    p = command(
        "predict", "run a whole model on image files",
        "run a whole model on images of any size (sliding windows with Gaussian blending) "
        "and write one output per input into DIR: same name, format and geometry; label maps "
        "for segmentation, images for enhancement, predictions.csv for classification" + extra,
        ["stcnnt predict model.safetensors scan.nii.gz --out pred/",
         "stcnnt predict model.safetensors dicom_series/ cine.nii.gz --out pred/ --overlap 0.25",
         "stcnnt predict model.safetensors *.png --out pred/ --probabilities --overwrite"],
        _cmd_predict,
    )  # fmt: skip
    model_options(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI, DICOM file or series folder, PNG, TIFF or .npy")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--patch", type=_patch, metavar="T,H,W",
                   help="window size (default: the training patch, else the image rounded "
                   "to valid sizes, at most 32,128,128)")  # fmt: skip
    p.add_argument("--probabilities", action="store_true",
                   help="also write segmentation probabilities")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace earlier predictions")
    p.add_argument("--t-axis", choices=("time", "slices"),
                   help="what T holds where the file does not say (docs/data.md)")  # fmt: skip


# --------------------------------------------------------------------------- main


def _error_document(err: BaseException) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": type(err).__name__, "message": str(err)}
    if isinstance(err, SpecError):
        doc["path"] = err.path
        if err.line is not None:
            doc["line"], doc["column"] = err.line, err.column
    if isinstance(err, ShapeError):
        doc["rule"] = err.rule
        doc["nearest"] = err.nearest
    if isinstance(err, DSLSyntaxError):
        doc["line"], doc["column"] = err.line, err.column
    return doc


def _user_error(args: argparse.Namespace | None, err: BaseException, prefix: str) -> int:
    _clear_progress(args or argparse.Namespace())
    if args is not None and getattr(args, "json", False):
        _emit_json({"ok": False, "error": _error_document(err)})
    message = str(err).rstrip()
    print(f"{prefix}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `stcnnt` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--json" in argv
    parser = _parser()
    args = None
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # report them against the subcommand, whose --help lists its options
            raise UsageError(f"stcnnt {args.command}", f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as err:
        message = f"{err} (see '{err.prog} --help')"
        if wants_json:
            _emit_json({"ok": False, "error": {"type": "UsageError", "message": message}})
        print(f"{err.prog}: error: {message}", file=sys.stderr)
        return 2
    prefix = f"stcnnt {args.command}"
    try:
        return args.func(args)
    except STCNNTError as err:
        return _user_error(args, err, prefix)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        return _user_error(args, err, prefix)
    except KeyboardInterrupt:
        _clear_progress(args)
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stcnnt schema | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except Exception as err:  # a bug: say so, with what is needed to report it
        _clear_progress(args)
        if getattr(args, "json", False):
            _emit_json({"ok": False, "error": {
                "type": "InternalError", "message": f"{type(err).__name__}: {err}",
            }})  # fmt: skip
        print(
            f"{prefix}: internal error (a bug in stcnnt-dsl, not in your input); please "
            f"report it on {ISSUES_URL} with the command line and this traceback:",
            file=sys.stderr,
        )
        traceback.print_exc(file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover - `python -m stcnnt_dsl.cli`
    sys.exit(main())
