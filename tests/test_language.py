"""The language: block strings, topology expressions, canonical printing and errors."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stcnnt_dsl.errors import DSLSyntaxError
from stcnnt_dsl.language.blockspec import BlockSpec, CellSpec
from stcnnt_dsl.language.options import CELL_KINDS, OPTIONS, options_for_kind
from stcnnt_dsl.language.parser import (
    MAX_CELLS,
    Expression,
    format_block,
    format_expression,
    parse_block,
    parse_expression,
)

# --------------------------------------------------------------------------- upstream strings

UPSTREAM = {
    "L1G1T1": [("local", True), ("global", True), ("temporal", True)],
    "L0L1G0G1T1": [
        ("local", False),
        ("local", True),
        ("global", False),
        ("global", True),
        ("temporal", True),
    ],
    "T1L1G1": [("temporal", True), ("local", True), ("global", True)],
    "L1G1": [("local", True), ("global", True)],
    "T1T1T1": [("temporal", True)] * 3,
    "C2": [("conv2d", False)],
    "C3": [("conv3d", False)],
    "V1": [("vit", True)],
    "L0": [("local", False)],
    "G0": [("global", False)],
    "T0": [("temporal", False)],
    "V0": [("vit", False)],
    "C2C3": [("conv2d", False), ("conv3d", False)],
    "C3L1": [("conv3d", False), ("local", True)],
}


@pytest.mark.parametrize("text", sorted(UPSTREAM))
def test_upstream_block_strings(text):
    block = parse_block(text)
    assert [(c.kind, c.mixer) for c in block.cells] == UPSTREAM[text]
    assert all(c.options == {} for c in block.cells)
    assert format_block(block) == text  # upstream form is the canonical form
    assert format_block(text) == text


# --------------------------------------------------------------------------- extensions


def cells(text):
    return [(c.kind, c.mixer, c.options) for c in parse_block(text).cells]


def test_whitespace_comments_and_lines():
    text = "L1 G1   # local then global\n\n  T1 # temporal\n# done"
    assert parse_block(text) == parse_block("L1G1T1")


def test_repetition():
    assert parse_block("(L1G1)*2 T1") == parse_block("L1G1L1G1T1")
    assert parse_block("L1*3") == parse_block("L1L1L1")
    assert parse_block("((L1)*2 G0)*2") == parse_block("L1L1G0L1L1G0")
    assert len(parse_block(f"L1*{MAX_CELLS}")) == MAX_CELLS


def test_inline_cell_options_are_validated_and_canonical():
    (cell,) = parse_block("L1[window=8, patch=2, heads=4, qkv=linear]").cells
    assert cell.options == {"window": 8, "patch": 2, "heads": 4, "qkv": "linear"}
    (cell,) = parse_block('L1[window=[8, 16], mixer_ratio=2, qkv="conv", att_dropout=1e-3]')
    assert cell.options == {
        "window": (8, 16),
        "mixer_ratio": 2.0,
        "qkv": "conv",
        "att_dropout": 0.001,
    }
    assert parse_block("L1[window=[8, 8]]")[0].options == {"window": 8}
    assert parse_block("T1[causal=true, qk_stride=2]")[0].options == {
        "causal": True,
        "qk_stride": 2,
    }
    assert parse_block("L1[rel_pos_bias=after_softmax, norm=instance2d, heads=auto]")


def test_group_options_push_down_inner_wins():
    block = parse_block("(L1[heads=2] G1 T1)[heads=4, window=4]*2 C2")
    assert len(block) == 7
    local, glob, temporal = block.cells[:3]
    assert local.options == {"heads": 2, "window": 4}  # the cell's own heads wins
    assert glob.options == {"heads": 4, "window": 4}
    assert temporal.options == {"heads": 4}  # window does not apply to T: skipped
    assert block.cells[3:6] == block.cells[:3]
    assert block.cells[6] == CellSpec("conv2d", False)
    # an option on a single cell, before its repeat count
    assert parse_block("L1[window=4]*2") == parse_block("L1[window=4] L1[window=4]")
    # nested groups: the inner group is closer to the cell
    nested = parse_block("((L1)[heads=2] G1)[heads=8]")
    assert [c.options["heads"] for c in nested] == [2, 8]


def test_format_block_canonical():
    assert format_block(parse_block("L1 G1 T1")) == "L1G1T1"
    block = parse_block("L1[window=8, heads=4] G1 T1")
    assert format_block(block) == "L1[heads=4, window=8] G1 T1"
    assert str(block) == "L1[heads=4, window=8] G1 T1"
    assert format_block("L1[window=[8,16]]C2") == "L1[window=[8, 16]] C2"
    assert format_block("L1[dropout=0.1]") == "L1[dropout=0.1]"
    # strings that are not bare words are quoted, and quote back
    weird = BlockSpec([CellSpec("local", True, {"qkv": "line ar"})])
    assert format_block(weird) == 'L1[qkv="line ar"]'
    with pytest.raises(ValueError):
        format_block(BlockSpec([]))


def test_block_position_offsets_for_embedding():
    # as if the text were a YAML value starting at line 7, column 11
    err = _err("L1G", line=7, column=11, source="arch.yaml")
    assert (err.line, err.column) == (7, 14)
    assert str(err).startswith("arch.yaml:7:14:")
    assert str(err).splitlines()[-1].index("^") == 4 + 13
    err = _err("L1\n  G1 X1", line=7, column=11)
    assert (err.line, err.column) == (8, 6)


# --------------------------------------------------------------------------- block errors


def _err(text, **kwargs) -> DSLSyntaxError:
    with pytest.raises(DSLSyntaxError) as info:
        parse_block(text, **kwargs)
    err = info.value
    assert err.line >= 1 and err.column >= 1
    assert "^" in str(err)  # caret excerpt
    return err


def _check(text, line, column, *words, **kwargs):
    err = _err(text, **kwargs)
    assert (err.line, err.column) == (line, column), str(err)
    for word in words:
        assert word in str(err), str(err)
    return err


def test_error_odd_length():
    _check("L1G", 1, 4, "G needs a mixer digit 0 or 1")


def test_error_unknown_letter():
    _check("X1", 1, 1, "unknown cell letter 'X'", "L, G, T, V", "C2", "C3")


def test_error_c_digit():
    _check("C1", 1, 2, "C must be followed by 2 or 3")


def test_error_lower_case():
    _check("l1g1", 1, 1, "upper case", "'L'")


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "# only a comment", "  # a\n  # b\n"])
def test_error_empty(text):
    _check(text, 1, 1, "empty block string")


def test_error_stray_digits():
    _check("L11", 1, 3, "stray digit")
    _check("1L1", 1, 1, "stray digit")
    _check("L1 1", 1, 4, "stray digit")
    _check("C21", 1, 3, "stray digit")


def test_error_mixer_digit_must_be_0_or_1():
    _check("L2", 1, 2, "must be 0 or 1", "got 2")
    _check("G1T9", 1, 4, "must be 0 or 1")


def test_error_unclosed_paren():
    _check("(L1G1", 1, 1, "'(' is never closed", "')'")
    _check("L1\n  ((L1) G1", 2, 3, "never closed")


def test_error_unclosed_bracket():
    _check("L1[window=8", 1, 3, "'[' is never closed", "']'")
    _check("L1[window=[8, 16]", 1, 3, "never closed")


def test_error_mismatched_and_unmatched_brackets():
    _check("(L1]", 1, 4, "must be closed with ')'")
    _check("L1)", 1, 3, "unmatched ')'")
    _check("()", 1, 2, "empty group")


def test_error_repeat_zero():
    _check("L1*0", 1, 4, "at least 1")
    _check("(L1G1)*0", 1, 8, "at least 1")


def test_error_repeat_without_count():
    _check("L1*", 1, 4, "repeat count")
    _check("L1* G1", 1, 5, "repeat count")
    _check("L1*2.5", 1, 4, "whole number")
    _check("*2", 1, 1, "before it")
    _check("L1*2*3", 1, 5, "(L1*2)*3")
    _check("L1*2[heads=4]", 1, 5, "before the repeat count")


def test_error_ambiguous_run_before_options_or_repeat():
    _check("L1G1*2", 1, 5, "(L1G1)*", "L1 G1*")
    _check("T1L1G1[heads=4]", 1, 7, "(T1L1G1)[")


def test_error_unknown_option_did_you_mean():
    _check("L1[windw=8]", 1, 4, "unknown option 'windw'", 'did you mean "window"')
    _check("L1[Window=8]", 1, 4, "lower case")


@pytest.mark.parametrize(
    "text, column, words",
    [
        ("L1[window=0]", 11, ["window", ">= 1"]),
        ("L1[window=-8]", 11, ["window", ">= 1"]),
        ("L1[heads=x]", 10, ["heads", "auto"]),
        ("L1[dropout=nan]", 12, ["dropout", "number"]),
        ("L1[dropout=1.5]", 12, ["dropout"]),
        ("L1[qkv=fast]", 8, ["conv, linear"]),
        ("L1[mixer_kernel=4]", 17, ["odd"]),
        ("L1[window=[8, 16, 32]]", 11, ["pair"]),
        ("L1[cosine=1]", 11, ["true or false"]),
    ],
)
def test_error_bad_option_value(text, column, words):
    _check(text, 1, column, *words)


def test_error_option_not_for_cell():
    _check("T1[window=8]", 1, 4, "does not apply to temporal")
    _check("C2[heads=4]", 1, 4, "does not apply to conv2d")
    _check("(L1G1)[causal=true]", 1, 8, "causal", "has none")
    _check("L1[dense=true]", 1, 4, "whole block")


def test_error_duplicate_option():
    _check("L1[window=8, heads=2, window=4]", 1, 23, "twice")


def test_error_too_many_cells():
    _check(f"L1*{MAX_CELLS + 1}", 1, 4, str(MAX_CELLS))
    _check("(L1G1)*512 T1", 1, 12, str(MAX_CELLS))
    _check("((L1G1)*32)*32", 1, 13, str(MAX_CELLS))
    _check("L1*99999999999999999999", 1, 4, str(MAX_CELLS))


def test_error_text_too_long():
    _check("L1" + " " * 100_000, 1, 100_001, "100000")


def test_error_nesting_depth():
    _check("(" * 40 + "L1" + ")" * 40, 1, 33, "nested more than 32")


def test_error_strings_and_characters():
    _check("L1[qkv='linear']", 1, 8, "double quotes")
    _check('L1[qkv="linear]', 1, 8, "unterminated string")
    _check("L1 @", 1, 4, "'@'")
    _check("L1[window 8]", 1, 11, "'='")
    _check("L1[window=]", 1, 11, "expected a value")
    _check("True", 1, 1, "lower case")


def test_error_positions_on_later_lines():
    _check("L1G1\n  T1\n  (L1 X1)", 3, 7, "unknown cell letter")
    _check("L1 # G\n# (\nT1[window=4]", 3, 4, "does not apply")
    _check("L1\r\nG1\r\n  L2", 3, 4, "0 or 1")


# --------------------------------------------------------------------------- expressions


def test_expression_examples():
    unet = parse_expression("unet(channels=[32,64,128], blocks=T1L1G1)")
    assert unet == Expression("unet", {"channels": [32, 64, 128], "blocks": parse_block("T1L1G1")})
    hrnet = parse_expression('hrnet(channels=32, blocks=[T1L1G1, "L1G1 T1[causal=true]"])')
    assert hrnet.args["blocks"] == [parse_block("T1L1G1"), "L1G1 T1[causal=true]"]
    llm = parse_expression("llm(channels=32, blocks=[T1L1G1, T1L1G1])")
    assert llm.topology == "llm" and len(llm.args["blocks"]) == 2


def test_expression_values():
    expr = parse_expression(
        "unet(blocks=L1G1 T1[causal=true], defaults={window=8, patch=2}, gate=true, "
        'down=merge, x=null, f=-1.5e-3, s="a \\"q\\" b", e=[], m={}, '
        "enc=[L1[window=4]G1, (L1G1)*2], n=[[1, 2], [3]],)"
    )
    a = expr.args
    assert a["blocks"] == parse_block("L1 G1 T1[causal=true]")
    assert a["defaults"] == {"window": 8, "patch": 2}
    assert a["gate"] is True and a["down"] == "merge" and a["x"] is None
    assert a["f"] == -1.5e-3 and a["s"] == 'a "q" b' and a["e"] == [] and a["m"] == {}
    assert a["enc"] == [parse_block("L1[window=4] G1"), parse_block("L1G1L1G1")]
    assert a["n"] == [[1, 2], [3]]


def test_expression_positions():
    text = "unet(channels=[32, 64], blocks=[T1L1G1, L1G1], encoder=[{window=8}])"
    expr = parse_expression(text)
    pos = expr.positions
    assert pos["unet"] == (1, 1)
    assert pos["unet.channels"] == (1, 15)
    assert pos["unet.channels[1]"] == (1, 20)
    assert pos["unet.blocks[1]"] == (1, 41)
    assert text[pos["unet.encoder[0].window"][1] - 1] == "8"
    assert text[expr.key_positions["unet.encoder[0].window"][1] - 1 :].startswith("window")
    assert text[expr.key_positions["unet.blocks"][1] - 1 :].startswith("blocks")
    # positions do not take part in equality
    assert parse_expression("unet( channels = [32,64] )") == parse_expression(
        "unet(channels=[32, 64])"
    )


def test_expression_errors():
    def check(text, column, *words):
        with pytest.raises(DSLSyntaxError) as info:
            parse_expression(text)
        assert (info.value.line, info.value.column) == (1, column), str(info.value)
        for word in words:
            assert word in str(info.value), str(info.value)

    check("", 1, "empty")
    check("unet", 5, "parentheses")
    check("unet(channels=32", 5, "never closed")
    check("unet(channels=32 blocks=L1)", 18, "','")
    check("unet(a=1, a=2)", 11, "twice")
    check("unet(blocks=L1G)", 16, "mixer digit")
    check("unet(blocks=T1[window=8])", 16, "does not apply")
    check("unet(c=[1, 2)", 13, "']'")
    check("unet(gate=True)", 11, "lower case")
    check("Unet(a=1)", 1, "lower case")
    check("unet(a=[" + "[" * 40 + "]" * 41 + ")", 39, "nested")


def test_format_expression():
    args = {
        "channels": [32, 64],
        "blocks": [parse_block("T1L1G1"), parse_block("L1[window=4] G1")],
        "gate": True,
        "down": "merge",
        "name": "my net",
        "word_like_block": "L1G1",
        "opts": {"window": 8, "patch": (2, 4)},
        "none": None,
        "ratio": 0.5,
    }
    text = format_expression("unet", args)
    assert text.startswith("unet(channels=[32, 64], blocks=[T1L1G1, L1[window=4] G1], gate=true")
    back = parse_expression(text)
    assert back.args == {**args, "opts": {"window": 8, "patch": [2, 4]}}
    assert format_expression(back.topology, back.args) == text
    with pytest.raises(ValueError):
        format_expression("Unet", {})
    with pytest.raises(ValueError):
        format_expression("unet", {"bad key": 1})
    with pytest.raises(ValueError):
        format_expression("unet", {"x": float("inf")})


# --------------------------------------------------------------------------- speed


def test_long_valid_block_parses_fast():
    unit = "L1[window=8, patch=2, heads=4, qkv=linear] G1[heads=4] T1[causal=true]  # cmt\n"
    text = unit * 300
    text += "# " + "x" * (100_000 - len(text) - 2)
    assert len(text) == 100_000
    parse_block("L1")  # build the parser outside the timing
    times = []
    for _ in range(3):  # the best of three: a busy machine or a GC pause is not the parser
        start = time.process_time()
        block = parse_block(text)
        times.append(time.process_time() - start)
    assert len(block) == 900
    assert min(times) < 0.5, times


@pytest.mark.parametrize(
    "text",
    [
        "(" * 50_000,
        "L1" * 49_999,
        "((L1)*1000)[heads=4] " * 4_000,
        ("(" * 30 + "L1" + ")*2" * 30 + " ") * 800,
        "L1[window=" + "[" * 50_000,
        "L1[window=" + "9" * 99_000 + "]",
        "(L1)" * 24_999,
        'L1[qkv="' + "a" * 99_000,
        "#" * 99_999 + "\nL1",
        "L1 " + "\n" * 99_000 + "L2",
    ],
)
def test_hostile_blocks_are_fast(text):
    start = time.process_time()
    try:
        parse_block(text)
    except DSLSyntaxError:
        pass
    assert time.process_time() - start < 1.0


# --------------------------------------------------------------------------- properties


def _from_schema(schema):
    """A strategy of raw values that the schema allows (the validator filters more)."""
    if "oneOf" in schema:
        return st.one_of([_from_schema(s) for s in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "integer":
        return st.integers(schema.get("minimum", 0), 64)
    if kind == "number":
        high = schema.get("exclusiveMaximum", schema.get("maximum", 1))
        return st.floats(schema.get("minimum", 0), high, exclude_max=True)
    if kind == "array":
        return st.lists(
            _from_schema(schema["items"]), min_size=schema["minItems"], max_size=schema["maxItems"]
        )
    raise AssertionError(schema)


def _valid_value(name):
    opt = OPTIONS[name]

    def ok(value):
        try:
            opt.type.check(value)
        except Exception:
            return False
        return True

    return _from_schema(opt.schema).filter(ok).map(opt.type.check)


@st.composite
def cell_specs(draw):
    kind = draw(st.sampled_from(CELL_KINDS))
    mixer = draw(st.booleans())
    readable = options_for_kind(kind, mixer and kind not in ("conv2d", "conv3d"))
    names = draw(st.lists(st.sampled_from(readable), unique=True, max_size=4))
    options = {name: draw(_valid_value(name)) for name in names}
    return CellSpec(kind, mixer, options)


block_specs = st.lists(cell_specs(), min_size=1, max_size=8).map(BlockSpec)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_specs)
def test_property_block_round_trip(block):
    text = format_block(block)
    assert parse_block(text) == block
    assert format_block(text) == text


_names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    _names,
    block_specs,
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_names, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_names, st.dictionaries(_names, _values, max_size=5))
def test_property_expression_round_trip(topology, args):
    text = format_expression(topology, args)
    expr = parse_expression(text)
    assert expr.topology == topology
    assert expr.args == args
    assert format_expression(topology, expr.args) == text


_SEEDS = [
    "L1G1T1",
    "(L1G1)[heads=4, window=[8, 16]]*2 T1[causal=true]  # c\nC2",
    'unet(channels=[32,64], blocks=[T1L1G1, "L1G1 T1"], d={window=8}, g=true)',
]
_ALPHABET = 'LGTVCXlg0123 ()[]{}*=,#"\\\n-.e_ab'


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(_SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(_ALPHABET))
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + ch + text[i + 1 :]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), st.text(alphabet=_ALPHABET, max_size=40), st.text(max_size=20)))
def test_property_garbage_parses_or_raises_syntax_error(text):
    for parse in (parse_block, parse_expression):
        start = time.process_time()
        try:
            parse(text)
        except DSLSyntaxError as err:
            assert 1 <= err.line <= text.count("\n") + 1
            assert err.column >= 1
            assert err.reason
        assert time.process_time() - start < 1.0
