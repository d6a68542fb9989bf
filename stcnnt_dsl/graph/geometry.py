"""One geometry per cell kind: everything that follows from a cell's kind, mixer digit,
channels and resolved options, as pure functions (no torch).

The layer library builds its modules from a geometry (heads, window, patch, grid, bias
table extent, hidden channels), shape checking reads its size rule, `explain` shows its
head count, and the counters read its parameters, FLOPs and saved activations: the
"auto heads" rule, the bias table size and the mixer width are written here only.

Cost conventions (the same everywhere):
- parameters by sub-module path inside the cell (`attn.qkv`, `mixer.0`, `norm1`, ...),
  the names the layer library gives its modules, so counts line up with `named_modules`;
- FLOPs = 2 x multiply-adds of convolutions, linear maps and attention products (Q·Kᵀ,
  P·V, and bias·V when the bias is added after the softmax), for one sample of T frames;
  norms, activations, softmax, additions and conv biases are not counted; a key may
  carry the operator after a colon (`attn.qkv:linear`; default: conv);
- saved activations: elements autograd keeps for the backward pass of a training
  forward in eager float32 (the lean paths of `stcnnt_dsl.nn.lean`), checked against
  autograd's own count (saved-tensor hooks) in tests/test_saved.py;
- workspace: elements a cell holds besides those while it runs, forward and backward
  (its temporaries, the gradients it computes, the kernels' buffers), read off the
  layers' code and checked against the allocator in tests/test_saved.py; the planner
  walks them in execution order (`stcnnt_dsl.planner.memory`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields, make_dataclass
from typing import Any, ClassVar

from ..errors import SpecError
from ..language.options import as_pair, options_for_kind
from ..machine import SDPA_MIN_TOKENS_CPU
from ..registry import (
    ACTIVATIONS,
    CELLS,
    CONV2D,
    CONV3D,
    GLOBAL,
    KIND_TO_LETTER,
    LOCAL,
    NORMS,
    TEMPORAL,
    VIT,
    CellKind,
    has_mixer_digit,
    register_cell,
)
from .rules import SizeRule

__all__ = [
    "GLOBAL_BIAS_EXTENT",
    "HEAD_FEATURES",
    "BlockOptions",
    "CellGeometry",
    "ConvGeometry",
    "ConvOptions",
    "GlobalOptions",
    "LocalOptions",
    "SpatialGeometry",
    "TemporalGeometry",
    "TemporalOptions",
    "VitOptions",
    "auto_heads",
    "cell_geometry",
    "component_params",
    "conv3d_columns",
    "norm_keeps_input",
    "option_record",
]

HEAD_FEATURES = 32
"""Features per head that `heads: auto` aims for."""
GLOBAL_BIAS_EXTENT = 8
"""Without `grid` or `input_size`, G's and V's relative position table covers offsets up
to +-(8-1) windows; farther windows share the edge entry (clipped relative positions)."""
# Beyond this many features the exact "auto" head count is not searched (the divisor
# search would take long); one head is used. Only absurd specs get here.
_EXACT_HEADS_LIMIT = 2**40
# Norms whose backward reads only their output (our instance-norm Function); batch,
# layer and registered norms keep their input too (torch's kernels read it).
_NORMS_KEEPING_OUTPUT_ONLY = frozenset({"instance2d", "instance3d"})
# torch runs a 3x3x3 convolution of one sample on CPU with its unfolding kernel
# (slow_conv3d: 27 values per input channel and position, forward and backward) unless
# N*C*D*H of its input exceeds this (then oneDNN, without columns).
_NATIVE_CONV3D_LIMIT = 20480


def conv3d_columns(cin: int, frames: int, t: int, h: int, w: int, padded: bool) -> int:
    """Elements of the columns a 3x3x3 convolution of [B, cin, T, H, W] unfolds (0 where
    oneDNN runs it), `padded`: its input is a padded copy (T+2, H+2)."""
    b = frames // max(t, 1)
    extra = 2 if padded else 0
    if b > 1 or cin * (t + extra) * (h + extra) > _NATIVE_CONV3D_LIMIT:
        return 0
    return 27 * cin * frames * h * w


# CPU attention kernels (`stcnnt_dsl.nn.functional.attend`): fused SDPA from
# `sdpa_min_tokens` tokens (the machine's choice, default SDPA_MIN_TOKENS_CPU) for heads of
# at most _SDPA_MAX_HEAD features; below, the short kernel works on chunks of
# _SHORT_CHUNK score elements (1 MiB of float32).
_SDPA_MAX_HEAD = 512
_SHORT_CHUNK = 2**18


def norm_keeps_input(norm: str) -> bool:
    """Whether autograd keeps a norm's input (besides the output the next op keeps)."""
    return norm not in _NORMS_KEEPING_OUTPUT_ONLY


@functools.lru_cache(maxsize=4096)
def auto_heads(features: int, target: int = HEAD_FEATURES) -> int:
    """The most heads that divide `features` and keep >= `target` features per head
    (1 when `features` < `target`); a divisor search in O(sqrt(features))."""
    if features > _EXACT_HEADS_LIMIT:
        return 1
    best, i = 1, 1
    while i * i <= features:
        if features % i == 0:
            for heads in (i, features // i):
                if heads > best and features // heads >= target:
                    best = heads
        i += 1
    return best


# --------------------------------------------------------------------------- option records


@dataclass(frozen=True)
class ConvOptions:
    """Options every cell reads (C2 and C3 read only these)."""

    norm: str
    activation: str
    drop_path: float
    padding: str
    proj_kernel: int


@dataclass(frozen=True)
class _AttentionOptions(ConvOptions):
    heads: int | str
    qkv: str
    qkv_kernel: int
    cosine: bool
    qk_norm: bool
    att_dropout: float
    out_proj: bool
    cell: str
    mixer_ratio: float
    mixer_kernel: int
    dropout: float


@dataclass(frozen=True)
class LocalOptions(_AttentionOptions):
    window: int | tuple[int, int]
    patch: int | tuple[int, int]
    rel_pos_bias: bool | str


@dataclass(frozen=True)
class GlobalOptions(LocalOptions):
    grid: int | tuple[int, int] | None


@dataclass(frozen=True)
class VitOptions(_AttentionOptions):
    window: int | tuple[int, int]
    grid: int | tuple[int, int] | None
    rel_pos_bias: bool | str


@dataclass(frozen=True)
class TemporalOptions(_AttentionOptions):
    causal: bool
    qk_stride: int


@dataclass(frozen=True)
class BlockOptions:
    """Options of a whole block."""

    dense: bool
    checkpoint: bool
    input_size: tuple[int, int] | None


RECORDS: dict[str, type] = {
    LOCAL: LocalOptions,
    GLOBAL: GlobalOptions,
    VIT: VitOptions,
    TEMPORAL: TemporalOptions,
    CONV2D: ConvOptions,
    CONV3D: ConvOptions,
}


def option_record(kind: str, values: Mapping[str, Any]) -> Any:
    """The typed option record of a `kind` cell from resolved values (extra keys are
    ignored: a cascade resolves more options than one kind reads). A registered kind
    gets a record with one attribute per option it reads."""
    record = RECORDS.get(kind) or _record_of(kind, options_for_kind(kind))
    return record(**{f.name: values[f.name] for f in fields(record)})


@functools.cache
def _record_of(kind: str, names: tuple[str, ...]) -> type:
    return make_dataclass(f"{kind}_options", [(n, Any) for n in names], frozen=True)


# --------------------------------------------------------------------------- helpers


def _conv_params(cin: int, cout: int, kernel: int, *, bias: bool, taps: int = 2) -> int:
    return cin * cout * kernel**taps + (cout if bias else 0)


def _conv_flops(cin: int, cout: int, kernel: int, positions: int, taps: int = 2) -> int:
    return 2 * cin * cout * kernel**taps * positions


@functools.lru_cache(maxsize=256)
def _factory_params(table: str, name: str, channels: int | None) -> int:
    """Parameters of a registered component, counted on an instance (cached); a
    factory that fails is reported as the user's component, not as our bug."""
    component = (NORMS if table == "norm" else ACTIVATIONS)[name]
    try:
        module = component.factory(channels) if channels is not None else component.factory()
        return sum(int(p.numel()) for p in module.parameters())
    except Exception as err:  # the user's code: any exception is theirs to see
        what = f"{channels} channels" if channels is not None else "no arguments"
        raise _fail(
            f"the registered {table} {name!r} failed when called with {what}: "
            f"{type(err).__name__}: {err}",
            table,
        ) from None


def component_params(
    table: str, name: str, channels: int = 0, input_size: tuple[int, int] | None = None
) -> int:
    """Parameters of the norm (table "norm", over `channels`) or activation (table
    "activation") called `name`."""
    if table == "activation":
        if name == "prelu":
            return 1
        if ACTIVATIONS[name].factory is not None:
            return _factory_params("activation", name, None)
        return 0
    if name == "layer":
        h, w = input_size or (0, 0)
        return 2 * channels * h * w
    if name in ("batch2d", "batch3d"):
        return 2 * channels
    if NORMS[name].factory is not None:
        return _factory_params("norm", name, channels)
    return 0


def _fail(message: str, option: str) -> SpecError:
    """An error about one option; the resolver adds the cell and where it was set."""
    return SpecError(message, option)


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class CellGeometry:
    """A cell: `kind`, `mixer`, channels, its typed `options` record and the nominal
    `input_size` of its level (for norm=layer and bias tables). Subclasses add what
    their attention needs."""

    kind: str
    mixer: bool
    in_channels: int
    out_channels: int
    options: Any
    input_size: tuple[int, int] | None = None

    family: ClassVar[str] = ""

    # ------------------------------------------------------------------ shared parts
    @property
    def changes_channels(self) -> bool:
        return self.in_channels != self.out_channels

    @property
    def hidden(self) -> int:
        """Hidden channels of the mixer."""
        return max(1, _scaled(self.options.mixer_ratio, self.out_channels)) if self.mixer else 0

    @property
    def parallel(self) -> bool:
        return self.mixer and getattr(self.options, "cell", "sequential") == "parallel"

    def validate(self) -> None:
        """Raise a `SpecError` (path: the option's name) if the options cannot make
        this cell."""
        if self.options.norm == "layer" and self.input_size is None:
            raise _fail(
                "norm=layer normalises over [C, H, W] with per-element affine parameters, so "
                "it needs the input size: set input_size: [H, W] at the top of the spec (or "
                "pass input_size=(H, W) to Block), or use instance2d / batch2d, which accept "
                "any size",
                "norm",
            )
        # A registered component is tried now, so that a factory that cannot make this
        # cell fails here, where the error names the option that chose it.
        self._norm_params(self.in_channels)
        self._norm_params(self.out_channels)
        component_params("activation", self.options.activation)

    def conv_kernels(self) -> list[int]:
        """Kernel sizes of the cell's spatial convolutions."""
        return [self.options.proj_kernel] if self.changes_channels else []

    def reads(self) -> frozenset[str]:
        """The options this cell really reads, given their values."""
        o = self.options
        out = {"norm", "drop_path"}
        if self.changes_channels:
            out.add("proj_kernel")
        if any(k > 1 for k in self.conv_kernels()):
            out.add("padding")
        if o.norm == "layer":
            out.add("input_size")
        return frozenset(out)

    def _norm_params(self, channels: int) -> int:
        return component_params("norm", self.options.norm, channels, self.input_size)

    def params(self) -> dict[str, int]:
        """Parameters by sub-module path."""
        out = {"norm1": self._norm_params(self.in_channels)}
        if self.changes_channels:
            out["proj"] = _conv_params(
                self.in_channels, self.out_channels, self.options.proj_kernel, bias=True
            )
        return out

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        """FLOPs of one sample of `t` frames at h x w, by sub-module path."""
        out = {}
        if self.changes_channels:
            out["proj"] = t * _conv_flops(
                self.in_channels, self.out_channels, self.options.proj_kernel, h * w
            )
        return out

    def size_rule(self) -> SizeRule:
        """The (T, H, W) this cell accepts, at its own resolution."""
        exact = self.input_size if self.options.norm == "layer" else None
        minimum, min_frames = 1, 1
        if self.options.padding == "reflect":
            # reflect padding by p needs p < size along every padded axis
            minimum = max(self.conv_kernels(), default=1) // 2 + 1
        return SizeRule((1, 1), "", exact, minimum, min_frames)

    def saved(self, frames: int, t: int, h: int, w: int) -> int:
        """Elements autograd keeps for backward in one training forward of `frames`
        (= B*T) frames of h x w (an estimate of eager float32 training, where padded
        convolutions and mixers save each tensor once: `stcnnt_dsl.nn.lean`)."""
        pixels = frames * h * w
        total = self.in_channels * pixels  # norm1's output, also the first conv's input
        if self.changes_channels or norm_keeps_input(self.options.norm):
            total += self.in_channels * pixels  # the input: the projection's or norm1's
        return total

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> tuple[int, int]:
        """Elements the cell holds besides what is saved, at its highest while it runs:
        (forward, backward), the backward with the gradient of its input (not its
        parameters' gradients, which stay: the planner adds those)."""
        return 0, self.in_channels * frames * h * w

    def describe(self) -> str:
        """`L1 (local)`."""
        letter = KIND_TO_LETTER[self.kind]
        token = f"{letter}{int(self.mixer)}" if has_mixer_digit(self.kind) else letter
        return f"{token} ({self.kind})"


def _scaled(ratio: float, channels: int) -> int:
    """int(ratio * channels), bounded for astronomically large channel counts."""
    try:
        return int(ratio * channels)
    except OverflowError:
        return channels * max(1, int(ratio))


@dataclass(frozen=True)
class _AttentionGeometry(CellGeometry):
    """What L, G, V and T share: Q/K/V, output projection, mixer."""

    heads: int = 1

    def validate(self) -> None:
        super().validate()
        if self.options.heads != "auto" and self.head_features() % self.heads:
            raise _fail(self._heads_message(), "heads")

    def head_features(self) -> int:
        """The feature count that heads split."""
        return self.out_channels

    def _heads_message(self) -> str:  # pragma: no cover - overridden
        return f"heads={self.heads} must divide {self.head_features()}"

    def conv_kernels(self) -> list[int]:
        kernels = super().conv_kernels()
        if self.options.qkv == "conv":
            kernels.append(self.options.qkv_kernel)
        if self.options.out_proj:
            kernels.append(3)
        if self.mixer:
            kernels.append(self.options.mixer_kernel)
        return kernels

    def reads(self) -> frozenset[str]:
        o = self.options
        out = set(super().reads()) | {
            "heads", "qkv", "cosine", "qk_norm", "att_dropout", "out_proj"
        }  # fmt: skip
        if o.qkv == "conv":
            out.add("qkv_kernel")
        if self.mixer:
            out |= {"cell", "mixer_ratio", "mixer_kernel", "activation", "dropout"}
        return frozenset(out)

    def params(self) -> dict[str, int]:
        o = self.options
        out = super().params()
        out.update(self.attention_params())
        if o.out_proj:
            out["attn.proj"] = _conv_params(self.out_channels, self.out_channels, 3, bias=True)
        if self.mixer:
            cout, hidden, k = self.out_channels, self.hidden, o.mixer_kernel
            if not self.parallel:
                out["norm2"] = self._norm_params(cout)
            mixer_in = self.in_channels if self.parallel else cout
            out["mixer.0"] = _conv_params(mixer_in, hidden, k, bias=True)
            out["mixer.1"] = component_params("activation", o.activation)
            out["mixer.2"] = _conv_params(hidden, cout, k, bias=True)
        return out

    def attention_params(self) -> dict[str, int]:  # pragma: no cover - overridden
        return {}

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        o = self.options
        out = super().flops(t, h, w)
        out.update(self.attention_flops(t, h, w))
        c = self.out_channels
        if o.out_proj:
            out["attn.proj"] = t * _conv_flops(c, c, 3, h * w)
        if self.mixer:
            mixer_in = self.in_channels if self.parallel else c
            out["mixer.0"] = t * _conv_flops(mixer_in, self.hidden, o.mixer_kernel, h * w)
            out["mixer.2"] = t * _conv_flops(self.hidden, c, o.mixer_kernel, h * w)
        return out

    def attention_flops(self, t: int, h: int, w: int) -> dict[str, int]:  # pragma: no cover
        return {}

    def saved(self, frames: int, t: int, h: int, w: int) -> int:
        o = self.options
        pixels = frames * h * w
        cout = self.out_channels
        total = super().saved(frames, t, h, w)
        if not self.recomputes_qkv():
            total += 3 * cout * pixels  # q, k, v (the attention itself is recomputed)
        if o.att_dropout or not o.out_proj:  # kept: the output (two layouts), the scores
            total += 2 * cout * pixels + self.score_elements(frames, t, h, w)
            if getattr(o, "rel_pos_bias", None) == "after_softmax":  # v laid out for bias @ v
                total += cout * pixels
        if self.mixer:  # norm2's output (the mixer's input) and the activation's input
            total += (0 if self.parallel else cout) * pixels + self.hidden * pixels
            if not self.parallel and norm_keeps_input(o.norm):  # norm2's input
                total += cout * pixels
        return total

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> tuple[int, int]:
        # forward: the Q/K/V convolution's output before the partition copies it, or the
        # mixer's activation and output; backward (lean): the mixer recomputes its
        # activation and holds it with its gradient and the hidden map's (3 hidden maps,
        # 2 output maps); the attention recomputes its output (`attention_work`) (what
        # the mixer's backward freed: its hidden and input maps, is used again first)
        pixels = frames * h * w
        c, hidden = self.out_channels, self.hidden
        attention = self.attention_work(frames, t, h, w, sdpa_min_tokens)
        if self.recomputes_qkv():  # q, k and v again, held while the attention's backward runs
            attention += 3 * c * pixels
        forward = max(3 * c * pixels, (hidden + 2 * c) * pixels if self.mixer else attention)
        backward = attention + self.in_channels * pixels
        if self.mixer:
            freed = (hidden + (0 if self.parallel else c)) * pixels
            backward = max((3 * hidden + 2 * c) * pixels, backward - freed)
        return forward, backward + self.in_channels * pixels

    def recomputes_qkv(self) -> bool:
        """Whether training keeps only the attention's input and recomputes q, k and v in
        the backward (`nn.lean.attention`: a Q/K/V convolution, an output projection, no
        attention dropout)."""
        o = self.options
        return o.qkv == "conv" and o.out_proj and not o.att_dropout

    def score_elements(self, frames: int, t: int, h: int, w: int) -> int:  # pragma: no cover
        return 0

    def attention_work(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> int:
        """Elements the attention's lean backward holds at its highest, by the kernel
        `nn.functional.attend` runs (temporal cells' huge heads: the explicit one)."""
        return self.explicit_work(frames, t, h, w)

    def explicit_work(self, frames: int, t: int, h: int, w: int) -> int:
        """Matmul + softmax, at the highest of its three steps (measured:
        tests/test_saved.py): the output's gradient in two layouts, v's and the
        reassembled output's beside the probabilities and their gradient; the softmax's
        backward (3 score maps); the logits' gradient with the gradients of q and k."""
        maps, scores = self.out_channels * frames * h * w, self.score_elements(frames, t, h, w)
        return max(4 * maps + 2 * scores, maps + 3 * scores, 5 * maps + scores)


@dataclass(frozen=True)
class SpatialGeometry(_AttentionGeometry):
    """L, G and V. `window`/`patch` are in pixels; with a `grid` (G, V) the window
    follows the input (window = None here) and the number of windows is fixed. A token
    is one patch (V: one window) of `patch_h x patch_w x C` features."""

    window: tuple[int, int] | None = None
    patch: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None
    bias_extent: tuple[int, int] | None = None

    family: ClassVar[str] = "spatial"

    @property
    def mode(self) -> str:
        """ "local": attention within a window; "global": across windows."""
        return "local" if self.kind == LOCAL else "global"

    def token_size(self) -> int | None:
        """Features of one token; None for V with a grid (its tokens grow with the input)."""
        patch = self.patch or self.window
        return None if patch is None else self.out_channels * patch[0] * patch[1]

    def head_features(self) -> int:
        token = self.token_size()
        return self.out_channels if token is None else token

    def _heads_message(self) -> str:
        token = self.token_size()
        if token is None:
            what = f"the out channels {self.out_channels} (V with a grid: heads split channels)"
        else:
            ph, pw = self.patch or self.window
            what = f"the token size {token} (= out channels {self.out_channels} x patch {ph}x{pw})"
        return (
            f"heads={self.heads} must divide {what}; e.g. heads={auto_heads(self.head_features())}"
        )

    def validate(self) -> None:
        super().validate()
        o = self.options
        if self.window and self.patch:
            (wh, ww), (ph, pw) = self.window, self.patch
            if wh % ph or ww % pw:
                raise _fail(
                    f"patch {ph}x{pw} must divide window {wh}x{ww} (a window is a whole "
                    "number of patches)",
                    "patch",
                )
        if o.qkv == "linear" and self.token_size() is None:
            raise _fail(
                "qkv=linear needs a fixed token size, but a V cell with a grid has tokens "
                "that grow with the input; use qkv=conv or a fixed window (grid: null)",
                "qkv",
            )

    def reads(self) -> frozenset[str]:
        out = set(super().reads())
        out.add("rel_pos_bias")
        if self.kind != VIT:
            out.add("patch")
        if self.kind != LOCAL:
            out.add("grid")
        if self.grid is None:
            out.add("window")
        if self.options.rel_pos_bias and self.kind != LOCAL and self.grid is None:
            out.add("input_size")
        return frozenset(out)

    def geometry_at(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, patch) in pixels on an h x w map."""
        if self.window is not None:
            return self.window, self.patch or self.window
        gh, gw = self.grid
        window = (h // gh, w // gw)
        return window, self.patch or window

    def tokens(self, h: int, w: int) -> tuple[int, int, int]:
        """(sequences per frame, tokens per sequence, features per token) on h x w."""
        (wh, ww), (ph, pw) = self.geometry_at(h, w)
        windows = (h // wh) * (w // ww)
        per_window = (wh // ph) * (ww // pw)
        d = self.out_channels * ph * pw
        return (windows, per_window, d) if self.mode == "local" else (per_window, windows, d)

    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        """The grid the tokens of one sequence sit on: patches in a window (L) or
        windows (G, V)."""
        (wh, ww), (ph, pw) = self.geometry_at(h, w)
        return (wh // ph, ww // pw) if self.mode == "local" else (h // wh, w // ww)

    def attention_params(self) -> dict[str, int]:
        o = self.options
        out: dict[str, int] = {}
        if o.qkv == "conv":
            out["attn.qkv"] = _conv_params(
                self.in_channels, 3 * self.out_channels, o.qkv_kernel, bias=False
            )
        else:
            ph, pw = self.patch or self.window
            out["attn.qkv"] = self.in_channels * ph * pw * 3 * self.token_size()
        if self.bias_extent is not None:
            eh, ew = self.bias_extent
            out["attn.bias_table"] = (2 * eh - 1) * (2 * ew - 1) * self.heads
        return out

    def attention_flops(self, t: int, h: int, w: int) -> dict[str, int]:
        o = self.options
        seqs, s, d = self.tokens(h, w)
        (ph, pw) = self.geometry_at(h, w)[1]
        out: dict[str, int] = {}
        if o.qkv == "conv":
            out["attn.qkv"] = t * _conv_flops(
                self.in_channels, 3 * self.out_channels, o.qkv_kernel, h * w
            )
        else:  # linear maps of (patch pixels x channels) token vectors ("path:category")
            out["attn.qkv:linear"] = (
                t * 2 * (h * w // (ph * pw)) * self.in_channels * ph * pw * 3 * d
            )
        products = 3 if o.rel_pos_bias == "after_softmax" else 2  # QK^T, PV (+ bias·V)
        out["attn.attention"] = t * products * 2 * s * s * d * seqs
        return out

    def score_elements(self, frames: int, t: int, h: int, w: int) -> int:
        seqs, s, _ = self.tokens(max(h, 1), max(w, 1))
        return frames * seqs * self.heads * s * s

    def attention_work(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> int:
        # the kernel `stcnnt_dsl.nn.functional.attend` picks on CPU from `sdpa_min_tokens`
        # tokens (0 on CUDA): fused SDPA keeps nothing S x S, but its own output and a
        # copy of its gradient in its layout beside the reassembled output, its gradient
        # and those of q, k, v (7 maps, measured: tests/test_saved.py); the short kernel
        # (heads of 4-64 features) 5 maps and one cache-sized chunk of scores; the
        # explicit one all scores (`explicit_work`)
        _, s, d = self.tokens(max(h, 1), max(w, 1))
        head = d // self.heads
        maps = self.out_channels * frames * h * w
        if s >= sdpa_min_tokens and head <= _SDPA_MAX_HEAD:
            return 7 * maps
        if 4 <= head <= 64:
            return 5 * maps + min(3 * self.score_elements(frames, t, h, w), 3 * _SHORT_CHUNK)
        return self.explicit_work(frames, t, h, w)

    def size_rule(self) -> SizeRule:
        rule = super().size_rule()
        if self.grid is not None:
            gh, gw = self.grid
            ph, pw = self.patch or (1, 1)
            what = f"grid {gh}x{gw}" + (
                f" of windows made of {ph}x{pw} patches" if self.patch else ""
            )
            return SizeRule((gh * ph, gw * pw), what, rule.exact, rule.minimum, rule.min_frames)
        wh, ww = self.window
        return SizeRule((wh, ww), f"window {wh}x{ww}", rule.exact, rule.minimum, rule.min_frames)


@dataclass(frozen=True)
class TemporalGeometry(_AttentionGeometry):
    """T: a token is a whole frame; heads are groups of channels."""

    family: ClassVar[str] = "temporal"

    def _heads_message(self) -> str:
        return (
            f"heads={self.heads} must divide the out channels {self.out_channels} of a "
            f"temporal cell (heads are groups of channels); e.g. heads="
            f"{auto_heads(self.out_channels)}"
        )

    def validate(self) -> None:
        super().validate()
        if self.options.qkv != "conv":
            raise _fail(
                "qkv=linear is not available for temporal attention: a token is a whole "
                "frame (C*H*W features), far too many for a linear map; use qkv=conv",
                "qkv",
            )
        norm = NORMS[self.options.norm]
        if self.options.causal and norm.mixes_frames:
            raise _fail(
                f"causal temporal attention cannot use norm={norm.name}: its statistics "
                "span frames (over T, or over the batch of frames in training), so later "
                "frames would change earlier outputs; use instance2d or layer",
                "norm",
            )

    def reads(self) -> frozenset[str]:
        return super().reads() | {"causal", "qk_stride"}

    def attention_params(self) -> dict[str, int]:
        o = self.options
        cin, cout, k = self.in_channels, self.out_channels, o.qkv_kernel
        if o.qk_stride == 1:
            return {"attn.qkv": _conv_params(cin, 3 * cout, k, bias=False)}
        return {
            "attn.qk": _conv_params(cin, 2 * cout, k, bias=False),
            "attn.v": _conv_params(cin, cout, k, bias=False),
        }

    def strided(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) of the strided Q and K maps."""
        k, stride = self.options.qkv_kernel, self.options.qk_stride
        return ((h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1)

    def attention_flops(self, t: int, h: int, w: int) -> dict[str, int]:
        o = self.options
        cin, c, k = self.in_channels, self.out_channels, o.qkv_kernel
        if o.qk_stride == 1:
            out = {"attn.qkv": t * _conv_flops(cin, 3 * c, k, h * w)}
            hq, wq = h, w
        else:
            hq, wq = self.strided(h, w)
            out = {
                "attn.qk": t * _conv_flops(cin, 2 * c, k, hq * wq),
                "attn.v": t * _conv_flops(cin, c, k, h * w),
            }
        out["attn.attention"] = 2 * t * t * c * hq * wq + 2 * t * t * c * h * w
        return out

    def score_elements(self, frames: int, t: int, h: int, w: int) -> int:
        return (frames // max(t, 1)) * self.heads * t * t


@dataclass(frozen=True)
class ConvGeometry(CellGeometry):
    """C2 (3x3 conv over H, W) and C3 (3x3x3 conv over T, H, W)."""

    family: ClassVar[str] = "conv"

    @property
    def taps(self) -> int:
        return 3 if self.kind == CONV3D else 2

    def conv_kernels(self) -> list[int]:
        return [*super().conv_kernels(), 3]

    def reads(self) -> frozenset[str]:
        return super().reads() | {"activation"}

    def params(self) -> dict[str, int]:
        out = super().params()
        out["conv"] = _conv_params(
            self.in_channels, self.out_channels, 3, bias=False, taps=self.taps
        )
        out["norm2"] = self._norm_params(self.out_channels)
        out["act"] = component_params("activation", self.options.activation)
        return out

    def flops(self, t: int, h: int, w: int) -> dict[str, int]:
        out = super().flops(t, h, w)
        out["conv"] = t * _conv_flops(self.in_channels, self.out_channels, 3, h * w, self.taps)
        return out

    def size_rule(self) -> SizeRule:
        rule = super().size_rule()
        if self.kind == CONV3D and self.options.padding == "reflect":
            return SizeRule(rule.multiple, rule.what, rule.exact, rule.minimum, 2)
        return rule

    def saved(self, frames: int, t: int, h: int, w: int) -> int:
        # norm2's output (the activation's input and the skip), and its input if it keeps it
        kept = 2 if norm_keeps_input(self.options.norm) else 1
        return super().saved(frames, t, h, w) + kept * self.out_channels * frames * h * w

    def workspace(
        self, frames: int, t: int, h: int, w: int, sdpa_min_tokens: int = SDPA_MIN_TOKENS_CPU
    ) -> tuple[int, int]:
        # C2: the convolution's and the norm's outputs forward, the gradients of the
        # branch and of the input backward; C3 (CPU): the unfolded columns as well
        pixels, cin, cout = frames * h * w, self.in_channels, self.out_channels
        if self.kind == CONV3D:
            columns = conv3d_columns(cin, frames, t, h, w, self.options.padding != "zeros")
            return columns + cin * pixels, columns + 3 * cin * pixels
        return 2 * cout * pixels, (cout + 2 * cin) * pixels


# --------------------------------------------------------------------------- construction


def _pair(value: Any) -> tuple[int, int] | None:
    return None if value is None else as_pair(value)


def cell_geometry(
    kind: str,
    mixer: bool,
    in_channels: int,
    out_channels: int,
    values: Mapping[str, Any],
    input_size: tuple[int, int] | None = None,
) -> CellGeometry:
    """The geometry of a cell from resolved option values (a mapping with at least the
    options its kind reads), validated: a `SpecError` whose path is the option at fault."""
    cell = CELLS[kind]
    geom = cell.geometry(
        kind=kind, mixer=mixer and cell.mixer, in_channels=in_channels,
        out_channels=out_channels, options=option_record(kind, values),
        input_size=None if input_size is None else as_pair(input_size),
    )  # fmt: skip
    geom.validate()
    return geom


def _temporal(**common: Any) -> TemporalGeometry:
    heads = common["options"].heads
    auto = heads == "auto"
    return TemporalGeometry(
        **common, heads=auto_heads(common["out_channels"]) if auto else int(heads)
    )


def _spatial(**common: Any) -> SpatialGeometry:
    kind, o = common["kind"], common["options"]
    grid = _pair(getattr(o, "grid", None)) if kind != LOCAL else None
    window = None if grid else as_pair(o.window)
    patch = None if kind == VIT else as_pair(o.patch)
    token_px = patch or window
    cout = common["out_channels"]
    features = cout if token_px is None else cout * token_px[0] * token_px[1]
    heads = auto_heads(features) if o.heads == "auto" else int(o.heads)
    extent = None
    if o.rel_pos_bias:
        if kind == LOCAL:
            if window[0] % patch[0] == 0 and window[1] % patch[1] == 0:
                extent = (window[0] // patch[0], window[1] // patch[1])
            else:  # refused by validate(); keep the geometry constructible
                extent = (1, 1)
        elif grid is not None:
            extent = grid
        elif common["input_size"] is not None:
            h, w = common["input_size"]
            extent = (max(1, h // window[0]), max(1, w // window[1]))
        else:
            extent = (GLOBAL_BIAS_EXTENT, GLOBAL_BIAS_EXTENT)
    return SpatialGeometry(
        **common, heads=heads, window=window, patch=patch, grid=grid, bias_extent=extent
    )


# --------------------------------------------------------------------------- built-in kinds

_MODULE = "stcnnt_dsl.models.cells:builtin_cell"
for _cell in (
    CellKind(
        LOCAL, "L", "attention within windows (Swin-style)", _spatial, _MODULE, color="#d6efd6"
    ),
    CellKind(
        GLOBAL,
        "G",
        "attention across windows on a grid (MaxViT grid)",
        _spatial,
        _MODULE,
        color="#e4dcf3",
    ),
    CellKind(
        TEMPORAL, "T", "attention over frames, per pixel", _temporal, _MODULE, color="#fde2cf"
    ),
    CellKind(
        VIT,
        "V",
        "attention between whole windows as tokens (ViT)",
        _spatial,
        _MODULE,
        color="#f3d9e6",
    ),
    CellKind(
        CONV2D,
        "C2",
        "3x3 convolution over H, W",
        ConvGeometry,
        _MODULE,
        mixer=False,
        color="#e8e8e8",
    ),
    CellKind(
        CONV3D,
        "C3",
        "3x3x3 convolution over T, H, W",
        ConvGeometry,
        _MODULE,
        mixer=False,
        color="#e0e0e0",
    ),
):
    register_cell(_cell)
