"""Block strings and topology expressions: parsing, validation and canonical printing.

The grammar lives in `grammar/stcnnt.lark` (installed as `stcnnt_dsl.grammar`); this
module drives the LALR parser token by token, turns the parse tree into `BlockSpec` /
`Expression` values, and turns every failure into a `DSLSyntaxError` that points at the
first bad character and says how to fix it.

Why token by token (Lark's interactive parser) rather than `Lark.parse`: it lets us
check each cell run and repeat count as soon as it is read (errors come out in text
order), stop at the first bracket nested too deeply (no deep trees, no recursion
limits), and remember which brackets are open (so an unclosed `(` is reported where it
was opened).

Limits keep hostile input cheap: texts of at most 100_000 characters, at most 1024
cells per block after repetition (checked before anything is expanded), at most 32
levels of nested brackets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.parsers.lalr_interactive_parser import InteractiveParser

from ..errors import DSLSyntaxError, SpecError
from ..registry import has_mixer_digit, load_plugins, on_register
from .blockspec import BlockSpec, CellSpec
from .options import LETTER_TO_KIND, OPTIONS, reads, validate_options

__all__ = [
    "MAX_CELLS",
    "MAX_DEPTH",
    "MAX_TEXT",
    "DSLSyntaxError",
    "Expression",
    "format_block",
    "format_expression",
    "parse_block",
    "parse_expression",
]

MAX_TEXT = 100_000
"""Longest text accepted (characters); longer texts are refused before parsing."""
MAX_CELLS = 1024
"""Most cells one block may expand to (after repetition)."""
MAX_DEPTH = 32
"""Most levels of nested brackets: (), [] and {} together."""


@dataclass(frozen=True)
class _Letters:
    """The cell letters of the registry as the lexer needs them: `mixer` letters take a
    digit 0/1 (L1), `fixed` ones are whole (C2)."""

    mixer: str
    fixed: tuple[str, ...]
    run: re.Pattern[str]
    cell: re.Pattern[str]
    help: str


@cache
def _letters_table() -> _Letters:
    """The letters of the registered cell kinds, read once per registration (not once
    per parse)."""
    letters = [(letter, has_mixer_digit(kind)) for letter, kind in LETTER_TO_KIND.items()]
    mixer = "".join(letter for letter, digit in letters if digit)
    fixed = tuple(letter for letter, digit in letters if not digit)
    cell = "|".join([f"[{mixer}][01]", *(re.escape(f) for f in fixed)])
    names = ", ".join(mixer)
    whole = f"{', '.join(fixed[:-1])} and {fixed[-1]}" if len(fixed) > 1 else "".join(fixed)
    help = f"{names} (each followed by 0 or 1: 1 = with mixer, 0 = without), {whole}"
    return _Letters(mixer, fixed, re.compile(f"(?:{cell})+"), re.compile(cell), help)


def _letters() -> _Letters:
    """The current letters (registered cell kinds join the grammar; plugins load on the
    first parse)."""
    load_plugins()
    return _letters_table()


on_register("cell", lambda name, cell: _letters_table.cache_clear())


_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*")
_KEYWORDS = {"true": True, "false": False, "null": None}
_UNESCAPE = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_ESCAPE = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_CLOSE = {close: open_ for open_, close in _OPEN.items()}
_SYMBOL = {"LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]", "LBRACE": "{", "RBRACE": "}"}
_DESCRIBE = {
    "RUN": "a cell (L1, G0, T1, V1, C2, C3, ...)",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "STAR": "'*'",
    "NUMBER": "a number",
    "NAME": "a name",
    "STRING": 'a "string"',
    "COMMA": "','",
    "EQUAL": "'='",
    "$END": "the end of the text",
}


@cache
def _lark() -> Lark:
    """The parser, built once (grammar analysis is the slow part) and shared."""
    grammar = (files("stcnnt_dsl.grammar") / "stcnnt.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", start=["block", "expression"])


# =========================================================================== public API


@dataclass(frozen=True)
class Expression:
    """A parsed one-line topology expression such as `unet(channels=32, blocks=T1L1G1)`.

    `args` holds plain values (int, float, bool, None, str, list, dict) and `BlockSpec`
    for unquoted block strings; quoted strings stay `str` (the spec layer decides what
    they mean). `positions` maps spec paths (`"unet"`, `"unet.channels"`,
    `"unet.blocks[1]"`, `"unet.encoder[0].window"`) to the (line, column) of the value,
    `key_positions` maps the same paths (for `name=value` pairs) to the name, so the
    spec layer can point at the exact place of a bad value or an unknown key. For a
    quoted string the position is that of the opening quote. Equality compares
    `topology` and `args` only.
    """

    topology: str
    args: dict[str, Any]
    positions: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False)
    key_positions: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False)


def parse_block(
    text: str, *, source: str | None = None, line: int = 1, column: int = 1
) -> BlockSpec:
    """Parse a block string (`L1G1T1`, `(L1G1)[heads=4]*2 T1  # comment`).

    `line`/`column` say where `text` starts inside a bigger file (e.g. a YAML value), so
    that errors carry file coordinates; `source` (a file name) prefixes the message.
    Repetition is expanded and group options are pushed down to the cells they apply
    to (options written closer to a cell win). Raises `DSLSyntaxError`.
    """
    tree, parse = _parse(text, "block", source=source, line=line, column=column)
    return BlockSpec(parse.block(tree))


def parse_expression(
    text: str, *, source: str | None = None, line: int = 1, column: int = 1
) -> Expression:
    """Parse a topology expression: `name(key=value, ...)`. Raises `DSLSyntaxError`.

    Values: numbers, true/false/null, lower-case words, "quoted strings", lists `[...]`,
    mappings `{key=value, ...}` and unquoted block strings (`blocks=L1G1 T1[causal=true]`).
    """
    tree, parse = _parse(text, "expression", source=source, line=line, column=column)
    return parse.expression(tree)


def format_block(block: BlockSpec | str) -> str:
    """Canonical text of a block: `L1G1T1` when no cell has options (the upstream form),
    else cells separated by spaces with options sorted by name: `L1[heads=4, window=8] G1`.

    `parse_block(format_block(b)) == b` for every valid block. A string is parsed first.
    """
    return str(parse_block(block) if isinstance(block, str) else block)


def format_expression(topology: str, args: Mapping[str, Any]) -> str:
    """Canonical one-line text of a topology expression; parses back to equal `args`.

    Values may be int, float (finite), bool, None, str, list/tuple (printed as lists),
    dict with name keys, and `BlockSpec` (printed unquoted, in canonical form).
    """
    if not isinstance(topology, str) or not _NAME.fullmatch(topology):
        raise ValueError(f"topology name must be a lower-case identifier, got {topology!r}")
    return f"{topology}({_format_pairs(args)})"


# =========================================================================== formatting


def _format_pairs(pairs: Mapping[str, Any]) -> str:
    out = []
    for key, value in pairs.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise ValueError(f"argument names must be lower-case identifiers, got {key!r}")
        out.append(f"{key}={_format_value(value)}")
    return ", ".join(out)


def _format_value(value: Any) -> str:
    """Text of a value that parses back to an equal value (lists for tuples)."""
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, BlockSpec):
        return format_block(value)
    if isinstance(value, str):
        if _NAME.fullmatch(value) and value not in _KEYWORDS:
            return value
        return '"' + "".join(_ESCAPE.get(ch, ch) for ch in value) + '"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value!r}")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + _format_pairs(value) + "}"
    raise TypeError(f"cannot write a value of type {type(value).__name__}: {value!r}")


# =========================================================================== parsing


def _parse(
    text: str, start: str, *, source: str | None, line: int, column: int
) -> tuple[Tree, _Builder]:
    """Check limits, run the parser, and return the tree with a builder for its values."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    if line < 1 or column < 1:
        raise ValueError("line and column are 1-based")
    # Pad so that Lark's positions (and the caret excerpt) are file coordinates.
    padded = "\n" * (line - 1) + " " * (column - 1) + text
    what = "block string" if start == "block" else "topology expression"

    def fail(message: str, ln: int, col: int) -> DSLSyntaxError:
        return DSLSyntaxError(message, text=padded, line=ln, column=col, source=source)

    if len(text) > MAX_TEXT:
        before = text[:MAX_TEXT]
        nl = before.count("\n")
        col = MAX_TEXT - before.rfind("\n") if nl else column + MAX_TEXT
        raise fail(
            f"the {what} is {len(text)} characters long; the limit is {MAX_TEXT}", line + nl, col
        )
    if not re.sub(r"#[^\n]*", "", text).strip():
        example = "L1G1T1" if start == "block" else "unet(channels=32, blocks=T1L1G1)"
        raise fail(f"empty {what}: write something like {example}", line, column)

    parser = _lark().parse_interactive(padded, start=start)
    stack: list[Token] = []  # open brackets
    last: Token | None = None  # last token read
    prev: Token | None = None  # the one before
    # Block strings only: cells so far in each open group, and the size of the atom just
    # read, so that a block that would expand past MAX_CELLS stops here, unexpanded.
    sizes, atom = [0], 0
    try:
        for tok in parser.lexer_thread.lex(parser.parser_state):
            kind = tok.type
            added = 0
            if kind == "RUN":
                atom = added = len(_split_run(tok, fail))
            elif kind in ("LSQB", "STAR") and last is not None and last.type == "RUN":
                if atom > 1:
                    raise fail(_ambiguous(str(last), str(tok)), tok.line, tok.column)
            elif kind == "NUMBER" and last is not None and last.type == "STAR":
                added = atom * (_repeat_count(tok, fail) - 1)
            parser.feed_token(tok)
            if kind in _OPEN:
                stack.append(tok)
                if len(stack) > MAX_DEPTH:
                    raise fail(
                        f"brackets nested more than {MAX_DEPTH} levels deep; "
                        "flatten the groups or lists",
                        tok.line,
                        tok.column,
                    )
                if kind == "LPAR":
                    sizes.append(0)
            elif kind in _CLOSE:
                stack.pop()
                if kind == "RPAR":
                    atom = added = sizes.pop()
            if added and start == "block":
                sizes[-1] += added
                if sizes[-1] > MAX_CELLS:
                    raise fail(_too_many(sizes[-1]), tok.line, tok.column)
            prev, last = last, tok
        tree = parser.feed_eof(last)
    except UnexpectedInput as err:
        raise _explain(err, _accepts(parser), fail, stack, last, prev, what) from None
    return tree, _Builder(fail)


def _split_run(tok: Token, fail) -> list[CellSpec]:
    """The cells of a run like `L1G1T1`, or an error at the first bad character."""
    run = str(tok)
    letters = _letters()
    if letters.run.fullmatch(run):
        return [_cell(m) for m in letters.cell.findall(run)]
    if len(run) >= 3 and run[1:].isalpha() and not run[1:].isupper():  # True, Linear
        raise fail(
            f"{run!r}: words are written in lower case here, write {run.lower()!r} "
            f"(an upper-case letter starts a block string: cells are {letters.help})",
            tok.line,
            tok.column,
        )
    pos = 0
    while (m := letters.cell.match(run, pos)) is not None:
        pos = m.end()
    message, offset = _bad_cell(run, pos)
    raise fail(message, tok.line, tok.column + offset)


def _bad_cell(run: str, pos: int) -> tuple[str, int]:
    """Why no cell starts at `run[pos]`, and the offset of the bad character."""
    ch = run[pos]
    nxt = run[pos + 1] if pos + 1 < len(run) else ""
    letters = _letters()
    if ch in letters.mixer:
        how = f"({ch}1 = with mixer, {ch}0 = without)"
        if nxt.isdigit():
            return f"the mixer digit after {ch} must be 0 or 1 {how}, got {nxt}", pos + 1
        return f"{ch} needs a mixer digit 0 or 1 {how}", pos + 1
    if ch == "C":
        how = "C must be followed by 2 or 3 (C2 = 2D convolution cell, C3 = 3D convolution cell)"
        return (f"{how}, got C{nxt}" if nxt.isdigit() else how), pos + 1
    whole = [f for f in letters.fixed if f[0] == ch]
    if whole:
        how = f"{ch} must be followed by {' or '.join(f[1:] for f in whole)} ({', '.join(whole)})"
        return (f"{how}, got {ch}{nxt}" if nxt.isdigit() else how), pos + 1
    if ch.isdigit():
        return (
            f"stray digit {ch!r}: a cell is one letter and one digit (L1, G0, T1, V1) "
            "or C2/C3; remove the extra digit",
            pos,
        )
    if ch in {f[0].lower() for f in (*letters.mixer, *letters.fixed)}:
        return f"cell letters are upper case: write {ch.upper()!r} instead of {ch!r}", pos
    if ch.isalpha():
        return f"unknown cell letter {ch!r}; valid cells are {letters.help}", pos
    return f"unexpected {ch!r}; expected a cell: {letters.help}", pos


def _cell(token: str) -> CellSpec:
    if token in LETTER_TO_KIND:  # a kind without a mixer digit (C2)
        return CellSpec(LETTER_TO_KIND[token], mixer=False)
    return CellSpec(LETTER_TO_KIND[token[0]], mixer=token[1] == "1")


def _repeat_count(tok: Token, fail) -> int:
    text = str(tok)
    if not text.isdigit():
        raise fail(f"repeat count must be a whole number >= 1, got {text}", tok.line, tok.column)
    count = int(text) if len(text) <= 6 else MAX_CELLS + 1
    if count < 1:
        raise fail(
            "repeat count must be at least 1 (*0 would remove the cell or group; "
            "delete it instead)",
            tok.line,
            tok.column,
        )
    if count > MAX_CELLS:
        raise fail(
            f"repeat count {text} is too large: a block has at most {MAX_CELLS} cells",
            tok.line,
            tok.column,
        )
    return count


def _too_many(cells: int) -> str:
    return (
        f"this block would expand to {cells} cells; a block has at most {MAX_CELLS} "
        "(use fewer cells or smaller repeat counts)"
    )


def _ambiguous(run: str, after: str) -> str:
    """`L1G1*2` could mean L1 G1 G1 or L1 G1 L1 G1: we refuse to guess."""
    what = "options" if after == "[" else "'*N'"
    head, tail = run[:-2], run[-2:]  # every cell is two characters
    return (
        f"{what} after {run!r} would apply to its last cell only: write "
        f"{head} {tail}{after}... for {tail} alone, or ({run}){after}... for all of them"
    )


def _accepts(parser: InteractiveParser) -> set[str]:
    """Terminals that the parser, in its current state, can really take next.

    (LALR states are shared between contexts, so the lexer's candidates are too many;
    trying each terminal on a cheap copy of the state gives the true set.)
    """
    out = set()
    for name in parser.choices():
        if name.isupper() or name == "$END":
            trial = parser.copy(deepcopy_values=False)
            try:
                trial.feed_token(Token(name, ""))
            except UnexpectedInput:
                continue
            out.add(name)
    return out


_PAIR_HINT = (
    "a pair of numbers is written in square brackets, e.g. window=[8, 4]; parentheses "
    "group the cells of a block string"
)


def _after_paren(last: Token | None, what: str) -> bool:
    """A number right after '(' in an expression: a tuple written Python's way."""
    return last is not None and last.type == "LPAR" and what != "block string"


def _describe(names: set[str]) -> str:
    words = [_DESCRIBE[n] for n in _DESCRIBE if n in names]
    if len(words) <= 1:
        return words[0] if words else "something else"
    return ", ".join(words[:-1]) + " or " + words[-1]


def _explain(err, expected, fail, stack, last, prev, what) -> DSLSyntaxError:
    """A `DSLSyntaxError` that says what went wrong at the failing place, and the fix."""
    after_star = last is not None and last.type == "STAR"
    count_hint = "'*' must be followed by a repeat count, e.g. L1*3 or (L1G1)*2"
    value_hint = 'expected a value: a number, true/false, a lower-case word, a "string", '
    value_hint += "a block string, a [list] or a {mapping}" if "RUN" in expected else "or a [list]"

    if isinstance(err, UnexpectedCharacters):
        ch, ln, col = err.char, err.line, err.column
        if after_star:
            return fail(count_hint, ln, col)
        if ch == "'":
            return fail('strings are written in double quotes: "..."', ln, col)
        if ch == '"':
            return fail(
                'unterminated string: close it with " on the same line '
                '(inside, write \\" for a quote and \\\\ for a backslash)',
                ln,
                col,
            )
        if ch.isdigit() and _after_paren(last, what):
            return fail(_PAIR_HINT, ln, col)
        if "RUN" in expected and (ch.isalnum() or ch == "_"):
            return fail(_bad_cell(ch, 0)[0], ln, col)
        return fail(f"unexpected character {ch!r}; expected {_describe(expected)}", ln, col)

    if not isinstance(err, UnexpectedToken):  # not raised by LALR; kept as a safety net
        return fail(f"syntax error; expected {_describe(expected)}", err.line, err.column)
    tok: Token = err.token
    if tok.type == "$END":
        ln, col = (last.end_line, last.end_column) if last is not None else (1, 1)
        if stack and _OPEN[stack[-1].type] in expected:
            opener = stack[-1]
            return fail(
                f"'{_SYMBOL[opener.type]}' is never closed: "
                f"add '{_SYMBOL[_OPEN[opener.type]]}' to close it",
                opener.line,
                opener.column,
            )
        if after_star:
            return fail(count_hint, ln, col)
        if last is not None and last.type == "EQUAL":
            return fail(f"{value_hint} after '='", ln, col)
        if expected == {"LPAR"}:
            return fail(
                "a topology expression needs its arguments in parentheses: "
                "unet(channels=32, blocks=T1L1G1)",
                ln,
                col,
            )
        return fail(f"unexpected end of the {what}; expected {_describe(expected)}", ln, col)

    ln, col = tok.line, tok.column
    kind, value = tok.type, str(tok)
    if after_star:
        return fail(count_hint, ln, col)
    if kind == "NUMBER" and _after_paren(last, what):
        return fail(_PAIR_HINT, ln, col)
    if "RUN" in expected and kind in ("NAME", "NUMBER") and value[0] not in "+-.":
        missing = " (or is a ',' missing before it?)" if "COMMA" in expected else ""
        return fail(_bad_cell(value, 0)[0] + missing, ln, col)
    if kind == "STAR":
        if prev is not None and prev.type == "STAR":
            return fail("only one '*N' per cell or group; use parentheses: (L1*2)*3", ln, col)
        return fail("'*N' repeats the cell or group written before it; there is none", ln, col)
    if kind == "LSQB" and prev is not None and prev.type == "STAR":
        return fail("options go before the repeat count: L1[heads=4]*2, not L1*2[heads=4]", ln, col)
    if kind == "RPAR" and last is not None and last.type == "LPAR":
        return fail("empty group '()': put at least one cell inside", ln, col)
    if kind in _CLOSE:
        if not stack:
            return fail(f"unmatched '{value}': nothing to close", ln, col)
        opener = stack[-1]
        if _CLOSE[kind] != opener.type:
            return fail(
                f"'{_SYMBOL[opener.type]}' at {opener.line}:{opener.column} must be closed "
                f"with '{_SYMBOL[_OPEN[opener.type]]}' before '{value}'",
                ln,
                col,
            )
    if expected - {"RPAR", "RSQB", "RBRACE"} == {"NAME"}:
        return fail(f"expected a name (lower case, e.g. window=8), got {value!r}", ln, col)
    if expected == {"EQUAL"}:
        return fail(f"expected '=' after {str(last)!r}, e.g. window=8", ln, col)
    if last is not None and last.type == "EQUAL":
        return fail(f"{value_hint}; got {value!r}", ln, col)
    return fail(f"unexpected {value!r}; expected {_describe(expected)}", ln, col)


# =========================================================================== tree -> values


def _first_token(tree: Tree | Token) -> Token:
    while isinstance(tree, Tree):
        tree = next(c for c in tree.children if c is not None)
    return tree


def _at(node: Tree | Token) -> tuple[int, int]:
    tok = _first_token(node)
    return (tok.line, tok.column)


class _Builder:
    """Turns a parse tree into values: expands blocks, validates options, records
    positions. Recursion follows the brackets, which the parser capped at MAX_DEPTH."""

    def __init__(self, fail) -> None:
        self.fail = fail
        self.positions: dict[str, tuple[int, int]] = {}
        self.key_positions: dict[str, tuple[int, int]] = {}

    def error(self, message: str, where: tuple[int, int]) -> DSLSyntaxError:
        return self.fail(message, *where)

    # ------------------------------------------------------------------ blocks
    def block(self, tree: Tree) -> list[CellSpec]:
        cells: list[CellSpec] = []
        for item in tree.children:
            part, times = self.item(item)
            if len(cells) + len(part) * times > MAX_CELLS:
                raise self.error(_too_many(len(cells) + len(part) * times), _at(item))
            cells.extend(part * times)
        return cells

    def item(self, tree: Tree) -> tuple[list[CellSpec], int]:
        atom, *rest = tree.children
        if atom.data == "run":
            cells = _split_run(atom.children[0], self.fail)
        else:
            cells = self.block(atom.children[1])
        times = 1
        for part in rest:
            if part.data == "options":
                options = self.options(part)
                if atom.data == "run":
                    cells[-1] = self.cell_options(cells[-1], options)
                else:
                    cells = self.group_options(cells, options)
            else:  # repeat: STAR NUMBER, checked by the parser loop
                times = int(part.children[1])
                if len(cells) * times > MAX_CELLS:
                    raise self.error(_too_many(len(cells) * times), _at(part.children[1]))
        return cells, times

    def options(self, tree: Tree) -> dict[str, tuple[Any, Token, tuple[int, int]]]:
        """name -> (raw value, name token, value position) of one `[...]`."""
        out: dict[str, tuple[Any, Token, tuple[int, int]]] = {}
        for opt in tree.children:
            if not isinstance(opt, Tree):
                continue  # the brackets
            name, value = opt.children
            if str(name) in out:
                raise self.error(
                    f"option {str(name)!r} is given twice in these brackets; keep one",
                    _at(name),
                )
            out[str(name)] = (self.value(value, None), name, _at(value))
        return out

    def check_option(self, name: str, entry, cell: CellSpec | None) -> Any:
        """The canonical value, or an error at the option's name (an option this cell
        does not read) or at its value (a bad value)."""
        value, name_tok, value_at = entry
        kind = None if cell is None else cell.kind
        try:
            checked = validate_options({name: value}, kind=kind, allow_block_level=False)[name]
        except SpecError as err:
            opt = OPTIONS.get(name)
            bad_name = (
                opt is None
                or opt.level != "cell"
                or (kind is not None and kind not in opt.applies_to)
            )
            reason = err.reason
            if opt is not None and kind is not None and kind not in opt.applies_to:
                reason += "; remove it here or put it on a cell it applies to"
            raise self.error(reason, _at(name_tok) if bad_name else value_at) from None
        if cell is not None and not reads(OPTIONS[name], cell.kind, cell.mixer):
            raise self.error(
                f"{cell.token} does not read option {name!r}: it only matters with a "
                f"mixer, and the digit 0 means no mixer (write {cell.letter}1 for one)",
                _at(name_tok),
            )
        return checked

    def cell_options(self, cell: CellSpec, options: dict) -> CellSpec:
        values = {name: self.check_option(name, e, cell) for name, e in options.items()}
        return CellSpec(cell.kind, cell.mixer, values)

    def group_options(self, cells: list[CellSpec], options: dict) -> list[CellSpec]:
        """Push a group's options down: each to the cells that read it, unless the cell
        sets it itself (the closer option wins)."""
        values = {name: self.check_option(name, e, None) for name, e in options.items()}
        for name, (_, name_tok, _) in options.items():
            if not any(reads(OPTIONS[name], c.kind, c.mixer) for c in cells):
                users = ", ".join(sorted(OPTIONS[name].applies_to))
                mixer = " with a mixer (digit 1)" if OPTIONS[name].mixer_only else ""
                raise self.error(
                    f"option {name!r} is read by {users} cells{mixer} and this group has "
                    f"none (it has {' '.join(c.token for c in cells)}); remove it or move it",
                    _at(name_tok),
                )
        done: dict[int, CellSpec] = {}  # repeated cells are shared objects: do each once
        out = []
        for cell in cells:
            new = done.get(id(cell))
            if new is None:
                extra = {
                    n: v
                    for n, v in values.items()
                    if reads(OPTIONS[n], cell.kind, cell.mixer) and n not in cell.options
                }
                new = CellSpec(cell.kind, cell.mixer, {**extra, **cell.options}) if extra else cell
                done[id(cell)] = new
            out.append(new)
        return out

    # ------------------------------------------------------------------ values
    def value(self, tree: Tree, path: str | None) -> Any:
        """The Python value of a value node; records its position under `path`."""
        if path is not None:
            self.positions[path] = _at(tree)
        kind = tree.data
        if kind == "number":
            return self.number(tree.children[0])
        if kind == "word":
            word = str(tree.children[0])
            return _KEYWORDS.get(word, word)
        if kind == "string":
            inner = str(tree.children[0])[1:-1]
            return re.sub(r"\\(.)", lambda m: _UNESCAPE[m[1]], inner)
        if kind == "list":
            items = [c for c in tree.children if isinstance(c, Tree)]
            return [
                self.value(c, None if path is None else f"{path}[{i}]") for i, c in enumerate(items)
            ]
        if kind == "mapping":
            return self.pairs(tree.children, path)
        if kind != "block":  # the grammar has no other value kinds
            raise TypeError(f"unexpected value node {kind!r} in the parse tree")
        return BlockSpec(self.block(tree))

    def number(self, tok: Token) -> int | float:
        text = str(tok)
        try:
            value = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:  # more digits than Python converts
            raise self.error(f"number too long ({len(text)} characters)", _at(tok)) from None
        if not math.isfinite(value):
            raise self.error(f"number {text} is too large", _at(tok))
        return value

    def pairs(self, children: list, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for arg in children:
            if not isinstance(arg, Tree):
                continue
            name, value = arg.children
            key = str(name)
            if key in out:
                raise self.error(f"{key!r} is given twice; keep one", _at(name))
            here = f"{path}.{key}"
            self.key_positions[here] = _at(name)
            out[key] = self.value(value, here)
        return out

    def expression(self, tree: Tree) -> Expression:
        name = tree.children[0]
        topology = str(name)
        self.positions[topology] = _at(name)
        args = self.pairs(tree.children[1:], topology)
        return Expression(topology, args, self.positions, self.key_positions)
