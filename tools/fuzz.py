"""Fuzz the language, the YAML loader, the spec and the layers with Hypothesis.

The property: every input either loads (and then round-trips, plans, and runs on the
meta device whenever `check` accepts the shape) or raises an `STCNNTError`, within a
time bound. Nothing else may escape: no `TypeError`, no torch or pydantic error, no hang.

    python tools/fuzz.py                         # 2,000 cases per target, 10 min budget
    python tools/fuzz.py --cases 20000 --budget 1800 --target yaml --seed 1

It prints, per target, the cases run and accepted, the longest input that loaded and the
slowest case; it exits 1 on the first failure and prints that input. tests/test_fuzz.py
runs the same targets with a few hundred cases each.

Targets:
- `block`: block strings (grammar-shaped, mutated upstream strings, random text);
- `expression`: one-line topology expressions, then plan, check and a meta-device run;
- `yaml`: YAML text (mutated bundled files, random documents, random characters);
- `dict`: Python dicts with any values (tuples, sets, NaN, huge ints, objects);
- `layers`: `Block(text, cin, cout, **random options)` and a meta-device forward of a
  random shape.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import stcnnt_dsl
from stcnnt_dsl import STCNNTError, dump_spec, format_block, load_spec, parse_block
from stcnnt_dsl.graph import build_graph, infer_shapes
from stcnnt_dsl.language.options import OPTIONS
from stcnnt_dsl.models import Backbone
from stcnnt_dsl.nn import Block

# Seconds per case: generous on purpose (a shared, loaded machine must not fail the
# suite); what the bound catches is a hang or an exponential blow-up.
TIME_LIMIT = {"block": 2.0, "expression": 10.0, "yaml": 10.0, "dict": 10.0, "layers": 10.0}

# --------------------------------------------------------------------------- strategies

_CELLS = ["L1", "L0", "G1", "G0", "T1", "T0", "V1", "V0", "C2", "C3"]
_WORDS = [
    "true", "false", "null", "linear", "conv", "layer", "batch2d", "instance2d",
    "instance3d", "auto", "after_softmax", "parallel", "sequential", "reflect", "gelu",
    "prelu", "merge", "interpolate", "block",
]  # fmt: skip
_OPTION_NAMES = [*OPTIONS, "windw", "foo", "channels"]

_small_number = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0.0, 0.5, 1.5, 1e-3, 1e9, 4.0, 2.5]),
    st.integers(10**9, 10**12),
)
_option_value_text = st.one_of(
    _small_number.map(str),
    st.sampled_from(_WORDS),
    st.lists(st.integers(0, 20), max_size=3).map(lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
    st.text("abc_\"' ", max_size=6).map(lambda s: '"' + s.replace('"', "") + '"'),
)
_valid_options_text = st.sampled_from([
    "heads=1", "heads=auto", "window=4", "window=[2, 4]", "patch=1", "patch=[1, 2]",
    "qkv=linear", "cosine=true", "qk_norm=true", "rel_pos_bias=after_softmax",
    "norm=batch2d", "norm=instance3d", "mixer_ratio=1", "mixer_kernel=1", "padding=reflect",
    "activation=prelu", "cell=parallel", "causal=true", "qk_stride=2", "grid=2",
    "out_proj=false", "proj_kernel=3", "drop_path=0.1",
])  # fmt: skip
_any_option_text = st.tuples(st.sampled_from(_OPTION_NAMES), _option_value_text).map(
    lambda kv: f"{kv[0]}={kv[1]}"
)
_options_text = st.one_of(
    st.just(""),
    st.just(""),
    st.lists(st.one_of(_valid_options_text, _valid_options_text, _any_option_text), min_size=1,
             max_size=2, unique_by=lambda o: o.split("=")[0]).map(lambda o: f"[{', '.join(o)}]"),
)  # fmt: skip
_atom = st.recursive(
    st.sampled_from(_CELLS),
    lambda inner: st.lists(inner, min_size=1, max_size=3).map(lambda xs: "(" + " ".join(xs) + ")"),
    max_leaves=6,
)
_repeat = st.one_of(st.just(""), st.just(""), st.integers(0, 3).map(lambda n: f"*{n}"))
grammar_blocks = st.lists(
    st.tuples(_atom, _options_text, _repeat).map("".join), min_size=1, max_size=5
).map(" ".join)

BLOCK_SEEDS = [
    "L1G1T1", "L0L1G0G1T1", "T1L1G1", "C2", "C3 T1L1G1", "V1", "(L1G1)*2 T1",
    "L1[window=8, patch=2, heads=4, qkv=linear] G1[grid=[2, 4]] T1[causal=true]  # c\nC2",
    '(L1 G1)[heads=4, window=[8, 16]]*2 T1[qk_stride=2, rel_pos_bias=after_softmax]',
]  # fmt: skip
EXPRESSION_SEEDS = [
    "unet(channels=[8, 16], blocks=T1L1G1)",
    'unet(channels=[8,16], blocks=[L1G1, "T1 L1"], heads=2, defaults={window=4, grid=2})',
    "hrnet(channels=[8, 16], blocks=L1G1, stages=3, resample=block, window=4)",
    'llm(channels=8, blocks=[T1L1G1, C2], dense_skips=false, name="x")',
    "unet(channels=8, levels=2, blocks=L1, encoder=[{window=4}, {patch=1}], input_size=[32, 32])",
]
_BLOCK_ALPHABET = 'LGTVCXlg0123 ()[]{}*=,#"\\\n-.e_abwindowpatchheads'
_YAML_ALPHABET = ":-[]{}&*!|>'\"#%@`,? \n\t0123456789.abcLGTunet_"


def _mutate(seeds: list[str], alphabet: str, max_edits: int = 4) -> st.SearchStrategy[str]:
    @st.composite
    def mutated(draw):
        text = draw(st.sampled_from(seeds))
        for _ in range(draw(st.integers(1, max_edits))):
            lines = text.split("\n")
            op = draw(st.sampled_from(["insert", "delete", "replace", "dup", "swap", "indent"]))
            i = draw(st.integers(0, max(0, len(text))))
            ch = draw(st.sampled_from(alphabet))
            if op == "insert":
                text = text[:i] + ch + text[i:]
            elif op == "delete":
                text = text[:i] + text[i + 1 :]
            elif op == "replace":
                text = text[:i] + ch + text[i + 1 :]
            else:
                k = draw(st.integers(0, len(lines) - 1))
                j = draw(st.integers(0, len(lines) - 1))
                if op == "dup":
                    lines.insert(k, lines[j])
                elif op == "swap":
                    lines[k], lines[j] = lines[j], lines[k]
                else:
                    lines[k] = draw(st.sampled_from(["", " ", "  ", "    "])) + lines[k].lstrip()
                text = "\n".join(lines)
        return text

    return mutated()


blocks_strategy = st.one_of(
    grammar_blocks,
    _mutate(BLOCK_SEEDS, _BLOCK_ALPHABET),
    st.text(alphabet=_BLOCK_ALPHABET, max_size=60),
    st.text(max_size=30),
)

_channels_text = st.one_of(
    st.integers(-1, 24).map(str),
    st.lists(st.integers(0, 24), max_size=4).map(lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
    st.lists(st.sampled_from([4, 8]), min_size=1, max_size=3).map(
        lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
    st.lists(st.sampled_from([4, 8]), min_size=1, max_size=3).map(
        lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
)  # fmt: skip
_block_arg = st.one_of(
    grammar_blocks,
    grammar_blocks.map(lambda b: '"' + b.replace('"', "").replace("\n", " ") + '"'),
    st.lists(grammar_blocks, min_size=1, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
)


@st.composite
def _expressions(draw):
    topology = draw(st.sampled_from(["unet", "unet", "hrnet", "llm", "unat"]))
    args = [f"channels={draw(_channels_text)}", f"blocks={draw(_block_arg)}"]
    extra = {
        "levels": st.integers(0, 4).map(str),
        "depth": st.integers(0, 4).map(str),
        "stages": st.integers(0, 4).map(str),
        "in_channels": st.integers(0, 3).map(str),
        "input_size": st.sampled_from(["[32, 32]", "32", "[16, 48]", "[0, 8]"]),
        "defaults": _options_text.map(lambda o: "{" + o[1:-1] + "}" if o else "{}"),
        "gate": st.sampled_from(["true", "false", "yes"]),
        "down": st.sampled_from(["merge", "interpolate", "pool"]),
        "resample": st.sampled_from(["conv", "block"]),
        "window_sizing": st.sampled_from(["fixed", "mixed", "keep_size", "keep_count"]),
        "dense_skips": st.sampled_from(["true", "false"]),
    }
    for name in draw(st.lists(st.sampled_from(sorted(extra)), unique=True, max_size=2)):
        args.append(f"{name}={draw(extra[name])}")
    for option in draw(st.lists(st.one_of(_valid_options_text, _any_option_text), max_size=2)):
        if not any(a.startswith(option.split("=")[0] + "=") for a in args):
            args.append(option)
    return f"{topology}({', '.join(args)})"


expressions_strategy = st.one_of(
    _expressions(),
    _expressions(),
    _mutate(EXPRESSION_SEEDS, _BLOCK_ALPHABET + "{}=,"),
    st.text(alphabet="unet()[]{}=,0123456789LGT", max_size=60),
)


def _bundled_texts() -> list[str]:
    folder = resources.files("stcnnt_dsl.architectures")
    return [p.read_text(encoding="utf-8") for p in folder.iterdir() if p.name.endswith(".yaml")]


_SPEC_KEYS = [
    "name", "in_channels", "input_size", "defaults", "unet", "hrnet", "llm", "channels",
    "blocks", "levels", "depth", "stages", "gate", "down", "up", "encoder", "bridge",
    "decoder", "branches", "resample", "dense_skips", "window_sizing", *OPTIONS,
]  # fmt: skip
_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 64), st.floats(allow_nan=True, width=32),
    st.text(max_size=8), st.sampled_from(["L1G1", "T1", "yes", "on", "0o17", "1:30", "~",
                                          ".nan", "2001-12-14", "L2", "auto", "linear"]),
)  # fmt: skip
_trees = st.recursive(
    _yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_SPEC_KEYS), st.text(max_size=5)), inner,
                        max_size=4),
    ),
    max_leaves=16,
)  # fmt: skip


@st.composite
def _spec_like(draw, leaves=_trees):
    """Dicts shaped like specs: mostly valid keys, any values."""
    topology = draw(st.sampled_from(["unet", "hrnet", "llm"]))
    body: dict[str, Any] = {
        "channels": draw(st.one_of(st.lists(st.integers(1, 16), min_size=1, max_size=3),
                                   st.integers(1, 16), leaves)),
        "blocks": draw(st.one_of(grammar_blocks, st.lists(grammar_blocks, min_size=1,
                                                          max_size=4), leaves)),
    }  # fmt: skip
    extra_keys = st.lists(st.sampled_from(_SPEC_KEYS), max_size=3, unique=True)
    for key in draw(st.one_of(st.just([]), extra_keys)):
        body[key] = draw(leaves)
    spec: dict[str, Any] = {topology: body}
    if draw(st.booleans()):
        spec["defaults"] = draw(st.dictionaries(st.sampled_from(_OPTION_NAMES), leaves, max_size=3))
    if draw(st.booleans()):
        spec[draw(st.sampled_from(_SPEC_KEYS))] = draw(leaves)
    return spec


def _dump(data: Any, flow: bool) -> str:
    return yaml.safe_dump(data, default_flow_style=flow, sort_keys=False, allow_unicode=True)


yaml_strategy = st.one_of(
    _mutate(_bundled_texts(), _YAML_ALPHABET, max_edits=6),
    st.tuples(_spec_like(), st.booleans()).map(lambda a: _dump(*a)),
    st.tuples(_trees, st.booleans()).map(lambda a: _dump(*a)),
    st.text(alphabet=_YAML_ALPHABET, max_size=80),
    st.text(max_size=40),
)


class _Odd:
    def __repr__(self) -> str:
        return "<odd object>"


_python_leaves = st.recursive(
    st.one_of(
        _yaml_scalars, st.floats(), st.integers(), st.binary(max_size=4),
        st.tuples(st.integers(0, 9), st.integers(0, 9)),
        st.frozensets(st.integers(0, 3), max_size=2),
        st.just(_Odd()), st.just(float("inf")), st.just(10**400), st.just(torch.float32),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(_SPEC_KEYS), inner, max_size=3)),
    max_leaves=10,
)  # fmt: skip
dicts_strategy = _spec_like(_python_leaves)

_layer_options = st.dictionaries(
    st.sampled_from(list(OPTIONS)),
    st.one_of(st.integers(-1, 9), st.sampled_from(_WORDS), st.booleans(),
              st.lists(st.integers(1, 8), min_size=2, max_size=2), st.floats(0, 1),
              st.none()),
    max_size=4,
)  # fmt: skip
layers_strategy = st.tuples(
    grammar_blocks,
    st.integers(1, 8),
    st.integers(1, 8),
    _layer_options,
    st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 24), st.integers(1, 24)),
)

STRATEGIES: dict[str, st.SearchStrategy] = {
    "block": blocks_strategy,
    "expression": expressions_strategy,
    "yaml": yaml_strategy,
    "dict": dicts_strategy,
    "layers": layers_strategy,
}
_shapes = [(1, 1, 8, 8), (1, 2, 16, 16), (2, 1, 32, 32), (1, 3, 32, 64), (1, 2, 64, 64)]


# --------------------------------------------------------------------------- the property


def _runs_on_meta(spec: Any) -> None:
    """`check` accepting a shape means it runs: a meta-device forward (no memory) must
    succeed and give the shape `infer_shapes` promised."""
    plan = build_graph(spec)
    for t, h, w in sorted({(t, h, w) for _, t, h, w in _shapes}):
        try:
            plan.check(t, h, w)
        except STCNNTError:
            continue
        shape = (1, t, spec.in_channels, h, w)
        stcnnt_dsl.check(plan, shape)  # the public check agrees (or raises STCNNTError)
        with torch.device("meta"):
            model = Backbone(plan)
        out = model(torch.empty(shape, device="meta"))
        expected = infer_shapes(plan, shape)["output"]
        if tuple(out.shape) != tuple(expected):
            raise AssertionError(f"{shape}: ran to {tuple(out.shape)}, not {expected}")
        return  # one accepted shape per spec is enough


def _after_loading(spec: Any) -> None:
    text = dump_spec(spec)
    if load_spec(text) != spec:
        raise AssertionError(f"dump_spec does not round-trip:\n{text}")
    _runs_on_meta(spec)


def run_block(text: str) -> bool:
    block = parse_block(text)
    if parse_block(format_block(block)) != block:
        raise AssertionError(f"format_block does not round-trip: {format_block(block)!r}")
    return True


def run_expression(text: str) -> bool:
    _after_loading(load_spec(text))
    return True


def run_yaml(text: str) -> bool:
    _after_loading(load_spec(text + "\n"))
    return True


def run_dict(data: dict) -> bool:
    _after_loading(load_spec(data))
    return True


def run_layers(case: tuple) -> bool:
    text, cin, cout, options, (b, t, h, w) = case
    with torch.device("meta"):
        block = Block(text, cin, cout, **options)
    try:
        block.check_input(torch.empty(b, t, cin, h, w, device="meta"))
    except STCNNTError:
        return True
    y = block(torch.empty(b, t, cin, h, w, device="meta"))
    if tuple(y.shape) != (b, t, cout, h, w):
        raise AssertionError(f"Block ran to {tuple(y.shape)}")
    return True


RUNNERS: dict[str, Callable[[Any], bool]] = {
    "block": run_block, "expression": run_expression, "yaml": run_yaml, "dict": run_dict,
    "layers": run_layers,
}  # fmt: skip


@dataclass
class Stats:
    """What a fuzz run saw for one target."""

    target: str
    cases: int = 0
    accepted: int = 0
    longest_accepted: int = 0
    longest_input: str = ""
    slowest: float = 0.0
    slowest_input: str = ""
    errors: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{self.target:10s} {self.cases:7d} cases, {self.accepted:6d} accepted; "
            f"longest accepted input {self.longest_accepted} chars; "
            f"slowest case {self.slowest * 1000:.1f} ms: {self.slowest_input[:70]!r}"
        )


def _size(case: Any) -> int:
    return len(case) if isinstance(case, str) else len(repr(case))


WARM_UP = {
    "block": "L1G1T1",
    "expression": EXPRESSION_SEEDS[0],
    "yaml": "unet:\n  channels: [8]\n  blocks: T1L1G1V1C2C3",
    "dict": {"hrnet": {"channels": [8, 16], "blocks": "L1G1T1"}},
    "layers": ("L1 G1 T1 V1 C3", 4, 8, {}, (1, 2, 16, 16)),
}


def warm_up() -> None:
    """First use builds the parser and warms torch up: keep that out of the timings."""
    for target, case in WARM_UP.items():
        RUNNERS[target](case)


def check_case(target: str, case: Any, stats: Stats | None = None) -> None:
    """Run one case: it must load or raise an STCNNTError, within the time bound."""
    start = time.perf_counter()
    accepted = False
    try:
        accepted = RUNNERS[target](case)
    except STCNNTError as err:
        if stats is not None:
            stats.errors[type(err).__name__] = stats.errors.get(type(err).__name__, 0) + 1
    elapsed = time.perf_counter() - start
    if stats is not None:
        stats.cases += 1
        if accepted:
            stats.accepted += 1
            if _size(case) > stats.longest_accepted:
                stats.longest_accepted, stats.longest_input = _size(case), repr(case)[:200]
        if elapsed > stats.slowest:
            stats.slowest, stats.slowest_input = elapsed, repr(case)[:200]
    if elapsed > TIME_LIMIT[target]:
        raise AssertionError(f"{target}: {elapsed:.2f}s > {TIME_LIMIT[target]}s for {case!r:.300}")


# --------------------------------------------------------------------------- the long run


def fuzz(target: str, cases: int, budget: float, first_seed: int = 0) -> Stats:
    """Run `cases` cases of `target` (in Hypothesis runs of up to 500) within `budget`
    seconds."""
    stats = Stats(target)
    deadline = time.monotonic() + budget
    chunk = 0
    while stats.cases < cases and time.monotonic() < deadline:
        n = min(500, cases - stats.cases)

        @seed(first_seed * 100_003 + chunk)
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(STRATEGIES[target])
        def run(case: Any) -> None:
            if time.monotonic() < deadline:
                check_case(target, case, stats)

        run()
        chunk += 1
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per target")
    parser.add_argument("--budget", type=float, default=600, help="seconds for all targets")
    parser.add_argument("--target", choices=["all", *STRATEGIES], default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    targets = list(STRATEGIES) if args.target == "all" else [args.target]
    torch.set_num_threads(1)
    warm_up()
    start = time.monotonic()
    for i, target in enumerate(targets):
        left = args.budget - (time.monotonic() - start)
        share = left / (len(targets) - i)
        try:
            stats = fuzz(target, args.cases, share, args.seed)
        except Exception as err:  # report the failing input and stop
            print(f"FAILED {target}: {type(err).__name__}: {err}", file=sys.stderr)
            for sub in getattr(err, "exceptions", ()):
                print(f"  {type(sub).__name__}: {sub}", file=sys.stderr)
            return 1
        print(stats.line(), flush=True)
        if math.isfinite(stats.slowest) and stats.errors:
            print(f"{'':10s} errors: {dict(sorted(stats.errors.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
