"""The catalogue of user mistakes: every entry is one test, and docs/errors.md.

Each entry says what the user did, the error type, where it points (a spec path, or a
line and column) and the key words of the message. `docs/errors.md` shows the exact
message of every entry; a test keeps it current. After changing a message, regenerate it:

    python tests/test_errors.py      # rewrites the catalogue section of docs/errors.md
"""

from __future__ import annotations

import ast
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import stcnnt_dsl
from stcnnt_dsl import (
    DataError,
    DSLSyntaxError,
    ResourceError,
    ShapeError,
    SpecError,
    STCNNTError,
    TrainError,
    WeightsError,
    build,
    check,
    load_spec,
    parse_block,
)
from stcnnt_dsl.compat import import_reference, reference_spec
from stcnnt_dsl.nn import Block
from stcnnt_dsl.studio.folders import OutsideFolderError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
START, END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"


pytestmark = pytest.mark.usefixtures("one_thread")


U = {"channels": [16], "blocks": "L1"}  # the smallest U-Net: options are added to it


def unet(**extra: Any) -> dict:
    return {"unet": {**U, **extra}}


@dataclass(frozen=True)
class Entry:
    """One mistake. `call` is what the user runs (see `_run`); `where` is the expected
    `.path` (a str) or `(line, column)`; `shown` replaces the call in the docs when the
    real argument is too long to print."""

    id: str
    group: str
    mistake: str
    call: tuple
    error: type[STCNNTError]
    where: str | tuple[int, int] | None
    words: tuple[str, ...]
    fix: str
    shown: str | None = None


E = Entry
# the model the weights and adaptation entries start from (issue 23)
_SEG = (
    'model = stcnnt_dsl.build("unet(channels=[8], blocks=L1, window=4, '
    'heads={seg={kind=segmentation, classes=2}})")\n'
)
# The smallest training run (issue 24): an in-memory data set "ds" (tests/train_fixtures.py)
RECIPE = {
    "model": "unet(channels=[4], blocks=L1, window=4, patch=2, heads=1)", "task": "segment",
    "data": {"path": "ds", "patch": [1, 16, 16], "batch": 1, "val": 1}, "steps": 1,
}  # fmt: skip
CATALOGUE: list[Entry] = [
    # ------------------------------------------------------------------ block strings
    E("block-mixer-digit", "Block strings", "a mixer digit other than 0 or 1 (the reference "
      "silently builds `L2` without a mixer)", ("block", "L1G2"), DSLSyntaxError, (1, 4),
      ("mixer digit", "0 or 1"), "write `G1` (with the mixer) or `G0` (without)."),
    E("block-missing-digit", "Block strings", "a cell letter without its digit",
      ("block", "L1G"), DSLSyntaxError, (1, 4), ("G needs a mixer digit",),
      "add the digit: `L1G1`."),
    E("block-unknown-letter", "Block strings", "a letter that is no cell", ("block", "L1X1"),
      DSLSyntaxError, (1, 3), ("unknown cell letter 'X'", "valid cells"),
      "use L, G, T, V (+ 0/1), C2 or C3."),
    E("block-lower-case", "Block strings", "lower-case cells", ("block", "l1g1"),
      DSLSyntaxError, (1, 1), ("upper case",), "write `L1G1`."),
    E("block-conv-digit", "Block strings", "a conv cell other than C2/C3", ("block", "C4"),
      DSLSyntaxError, (1, 2), ("C must be followed by 2 or 3",), "write `C2` or `C3`."),
    E("block-stray-digit", "Block strings", "an extra digit", ("block", "L11"),
      DSLSyntaxError, (1, 3), ("stray digit",), "remove it: `L1`."),
    E("block-empty", "Block strings", "an empty block string", ("block", "  # nothing"),
      DSLSyntaxError, (1, 1), ("empty block string",), "write at least one cell."),
    E("block-unclosed", "Block strings", "an unclosed group", ("block", "(L1G1)*2 (T1"),
      DSLSyntaxError, (1, 10), ("never closed", "')'"), "close it: `(T1)`."),
    E("block-repeat-zero", "Block strings", "a repeat count of 0", ("block", "L1*0"),
      DSLSyntaxError, (1, 4), ("at least 1",), "delete the cell instead."),
    E("block-ambiguous-repeat", "Block strings", "`*N` after a run of several cells",
      ("block", "L1G1*2"), DSLSyntaxError, (1, 5), ("last cell", "(L1G1)*"),
      "write `(L1G1)*2` (the group) or `L1 G1*2` (the last cell)."),
    E("block-unknown-option", "Block strings", "a misspelt inline option",
      ("block", "L1[windw=4]"), DSLSyntaxError, (1, 4), ("did you mean", "window"),
      "use the option's name: `L1[window=4]`."),
    E("block-option-wrong-cell", "Block strings", "an option the cell does not read",
      ("block", "T1[window=4]"), DSLSyntaxError, (1, 4), ("does not apply to temporal",),
      "put it on a cell that reads it (L, G, V)."),
    E("block-option-value", "Block strings", "an inline value out of range",
      ("block", "L1[heads=0]"), DSLSyntaxError, (1, 10), ("heads", "positive integer"),
      "heads >= 1 or `auto`."),
    E("block-too-long", "Block strings", "a block string of a million characters",
      ("block", "L1" * 500_000), DSLSyntaxError, (1, 100_001), ("limit is 100000",),
      "a block string is at most 100,000 characters; use repetition `(L1G1)*4`.",
      shown='stcnnt_dsl.parse_block("L1" * 500_000)'),
    E("block-too-many-cells", "Block strings", "a repetition that expands past 1024 cells",
      ("block", "(L1G1)*600"), DSLSyntaxError, (1, 8), ("at most 1024",),
      "use fewer cells or smaller repeat counts."),
    E("block-in-yaml", "Block strings", "a bad block string inside a YAML file",
      ("file", "unet:\n  channels: [16]\n  blocks: L1G2\n"), DSLSyntaxError, (3, 14),
      ("arch.yaml", "unet.blocks", "mixer digit"), "the caret points into the file."),
    # ------------------------------------------------------------------ options
    E("option-unknown", "Options", "an unknown option name", ("build", unet(windw=8)),
      SpecError, "unet.windw", ("unknown key", 'did you mean "window"'), "fix the spelling."),
    E("option-wrong-type", "Options", "a value of the wrong type",
      ("build", unet(window="big")), SpecError, "unet.window", ("expected an integer",),
      "window is an int or [h, w]."),
    E("option-zero-size", "Options", "a zero size", ("build", unet(window=0)), SpecError,
      "unet.window", ("must be >= 1", "got 0"), "sizes are >= 1 pixel."),
    E("option-negative-size", "Options", "a negative size", ("build", unet(patch=[2, -2])),
      SpecError, "unet.patch", ("must be >= 1", "got -2"), "sizes are >= 1 pixel."),
    E("option-nan", "Options", "NaN where a number is expected (YAML `.nan`)",
      ("text", "unet:\n  channels: [16]\n  blocks: L1\n  dropout: .nan\n"), SpecError, (4, 12),
      ("dropout", "finite number", "nan"), "give a probability in [0, 1)."),
    E("option-out-of-range", "Options", "a probability of 1.5", ("build", unet(dropout=1.5)),
      SpecError, "unet.dropout", ("must be in [0, 1)", "1.5"), "use a value in [0, 1)."),
    E("option-enum", "Options", "a misspelt choice", ("build", unet(norm="layer_norm")),
      SpecError, "unet.norm", ("expected one of", 'did you mean "layer"'),
      "use one of the listed names."),
    E("option-yes-no", "Options", "YAML 1.1 booleans (`yes`, `on`)",
      ("text", "unet:\n  channels: [16]\n  blocks: L1\n  cosine: yes\n"), SpecError, (4, 11),
      ("cosine", "true or false", "'yes'"), "write `true` or `false`."),
    E("option-even-kernel", "Options", "an even mixer kernel", ("build", unet(mixer_kernel=4)),
      SpecError, "unet.mixer_kernel", ("must be odd",), "use 1, 3, 5, ..."),
    E("option-not-for-block", "Options", "a keyword option no cell of a Block reads",
      ("Block", "T1", 8, 8, {"window": 4}), SpecError, "Block.window",
      ("is not read by any cell of Block (T1 (temporal))", "remove it"),
      "remove it, or add a cell that reads it."),
    E("option-code-string", "Options", "a string that looks like code",
      ("build", unet(activation="__import__('os').system('ls')")), SpecError,
      "unet.activation", ("expected one of", "gelu"),
      "options are closed lists of names: nothing is imported or evaluated."),
    E("heads-divide-patch", "Options", "heads that do not divide the channels of a patch",
      ("build", unet(heads=3)), SpecError, "unet.heads",
      ("encoder.0 cell 0 (L1)", "heads=3 must divide the token size 64", "16 x patch 2x2",
       "e.g. heads=2"),
      "use a divisor of channels x patch pixels, or `auto`."),
    E("heads-divide-temporal", "Options", "temporal heads that do not divide the channels",
      ("build", {"unet": {"channels": [16], "blocks": "T1", "heads": 3}}), SpecError,
      "unet.heads", ("heads=3", "out channels 16", "temporal"),
      "use a divisor of the channels."),
    E("window-not-multiple-of-patch", "Options", "a window that is not a multiple of the patch",
      ("build", unet(window=6, patch=4)), SpecError, "unet.patch",
      ("patch 4x4 must divide window 6x6",), "make the window a whole number of patches."),
    E("layer-norm-without-size", "Options", "norm=layer without input_size",
      ("build", unet(norm="layer")), SpecError, "unet.norm",
      ("needs the input size", "input_size"), "set `input_size: [H, W]` or use instance2d."),
    E("qkv-linear-temporal", "Options", "linear Q/K/V on a temporal cell",
      ("build", {"unet": {"channels": [16], "blocks": "T1[qkv=linear]"}}), SpecError,
      "unet.blocks", ("encoder.0 cell 0", "not available for temporal",), "use qkv=conv."),
    # ------------------------------------------------------------------ topology
    E("blocks-list-short", "Topology", "fewer block strings than levels (the reference "
      "silently reuses the first)",
      ("build", {"unet": {"channels": [16, 32, 64], "blocks": ["L1", "G1"]}}), SpecError,
      "unet.blocks", ("has 2 entries but needs 3 or 4",),
      "one per level (the bridge uses the last), or one more for the bridge."),
    E("stage-list-length", "Topology", "a per-level override list of the wrong length",
      ("build", {"unet": {"channels": [16, 32], "blocks": "L1", "encoder": [{}]}}), SpecError,
      "unet.encoder", ("has 1 entries but needs 2",), "one entry per level."),
    E("levels-vs-channels", "Topology", "levels that contradict the channel list",
      ("build", {"unet": {"channels": [16, 32], "levels": 3, "blocks": "L1"}}), SpecError,
      "unet.levels", ("levels=3 but channels lists 2",), "drop levels or fix the list."),
    E("levels-missing", "Topology", "one channel count and no levels",
      ("build", {"unet": {"channels": 16, "blocks": "L1"}}), SpecError, "unet",
      ("channels as a list", "levels"), "give channels per level or set levels."),
    E("levels-zero", "Topology", "zero levels",
      ("build", {"unet": {"channels": 16, "levels": 0, "blocks": "L1"}}), SpecError,
      "unet.levels", ("positive integer", "got 0"), "levels >= 1."),
    E("channels-zero", "Topology", "a zero channel count",
      ("build", {"unet": {"channels": [16, 0], "blocks": "L1"}}), SpecError, "unet.channels",
      ("positive integer", "got 0"), "channels >= 1."),
    E("hrnet-stages", "Topology", "fewer HR-Net stages than levels",
      ("build", {"hrnet": {"channels": [16, 32], "blocks": "L1", "stages": 1}}), SpecError,
      "hrnet.stages", ("must be >= levels=2",), "stages >= levels."),
    E("llm-depth", "Topology", "an LLM depth that contradicts a per-block list",
      ("build", {"llm": {"channels": 16, "blocks": ["L1", "G1"], "depth": 3}}), SpecError,
      "llm.depth", ("depth=3", "2 entries"), "drop depth or give one entry per block."),
    E("levels-too-many", "Topology", "a channel list of 100 levels",
      ("build", {"unet": {"channels": [8] * 100, "blocks": "L1"}}), SpecError, "unet.channels",
      ("100 levels is more than the 16 allowed",), "a few levels (each halves H and W).",
      shown='stcnnt_dsl.build({"unet": {"channels": [8] * 100, "blocks": "L1"}})'),
    E("depth-too-many", "Topology", "an LLM stack a billion blocks deep",
      ("build", {"llm": {"channels": 8, "blocks": "L1", "depth": 10**9}}), SpecError,
      "llm.depth", ("more than the 1024 allowed",), "fewer blocks."),
    E("llm-dense-channels", "Topology", "dense skips between blocks of different widths",
      ("build", {"llm": {"channels": [16, 32], "blocks": "L1"}}), SpecError, "llm.channels",
      ("same channels", "dense_skips: false"), "one width, or dense_skips: false."),
    E("topology-choice", "Topology", "a topology option outside its choices",
      ("build", unet(down="pool")), SpecError, "unet.down",
      ("'merge' or 'interpolate'", "got 'pool'"), "use merge or interpolate."),
    E("topology-missing", "Topology", "no topology", ("build", {"name": "x"}), SpecError, "",
      ("exactly one topology",), "add one of unet, hrnet, llm."),
    E("topology-required-key", "Topology", "a required key left out",
      ("build", {"unet": {"channels": [16]}}), SpecError, "unet",
      ("required key 'blocks' is missing",), "add blocks."),
    E("topology-unknown", "Topology", "a misspelt topology in an expression",
      ("build", "unat(channels=[16], blocks=L1)"), DSLSyntaxError, (1, 1),
      ("unknown topology 'unat'", 'did you mean "unet"'), "unet, hrnet or llm."),
    E("expression-unknown-key", "Topology", "a misspelt key in an expression",
      ("build", "unet(channels=[16], blocks=L1, levls=1)"), SpecError, "unet.levls",
      ("<expression>:1:32", 'did you mean "levels"'), "fix the spelling."),
    E("window-sizing-without-size", "Topology", "per-level window sizing without input_size",
      ("build", unet(window_sizing="mixed")), SpecError, "unet.window_sizing",
      ("input_size",), "set input_size: [H, W] or window_sizing: fixed."),
    E("input-size-not-divisible", "Topology", "an input_size the levels cannot halve",
      ("build", {"input_size": [34, 34], "unet": {"channels": [16, 32], "blocks": "C2"}}),
      SpecError, "input_size", ("34x34 is not divisible by 4",), "use a multiple of 2^levels."),
    # ------------------------------------------------------------------ inputs
    E("input-hw-window", "Inputs", "H that a level's window does not divide",
      ("check", "unet", (1, 2, 1, 40, 32)), ShapeError, "unet.encoder[1]",
      ("window 8x8: 8 must divide H=20", "40x32 is 20x16", "nearest valid H: 32 or 64"),
      "use a listed size (or pad / crop the input)."),
    E("input-hw-downsampling", "Inputs", "H, W that the down-sampling steps cannot halve",
      ("check", "unet", (1, 2, 1, 36, 36)), ShapeError, "unet.encoder[0]",
      ("valid inputs are H and W multiples of 32", "nearest valid H: 32 or 64",
       "encoder.0 cell 1 (L1)"), "use a multiple of the model's size multiple."),
    E("input-t-zero", "Inputs", "T = 0 frames", ("check", "unet", (1, 0, 1, 64, 64)),
      ShapeError, "", ("must be >= 1", "(1, 0, 1, 64, 64)"), "T >= 1 (1 for 2D)."),
    E("input-t-conv3d-reflect", "Inputs", "one frame through a C3 cell with reflect padding",
      ("check", {"llm": {"channels": 16, "blocks": "C3", "padding": "reflect"}},
       (1, 1, 1, 16, 16)), ShapeError, "llm.stages[0]",
      ("T >= 2", "reflect padding", "padding=zeros"),
      "give >= 2 frames or use padding=zeros."),
    E("input-channels", "Inputs", "an input shape with the wrong channels",
      ("check", "unet", (1, 2, 3, 64, 64)), ShapeError, "in_channels",
      ("1 input channel(s)", "C=3"), "C must be the spec's in_channels."),
    E("input-shape-text", "Inputs", "a shape that is not five integers",
      ("check", "unet", "1,2,1,64"), ShapeError, "", ("5 integers [B, T, C, H, W]",),
      "write B,T,C,H,W."),
    E("forward-channels", "Inputs", "a tensor with the wrong number of channels",
      ("forward", "unet-2d-small", (1, 2, 3, 32, 32), torch.float32), ShapeError, "",
      ("expected 1 input channels at dim 2", "(1, 2, 3, 32, 32)"), "C must be in_channels."),
    E("forward-bcthw", "Inputs", "a [B, C, T, H, W] tensor (the reference's layout)",
      ("forward", "unet-2d-small", (1, 1, 4, 32, 32), torch.float32), ShapeError, "",
      ("looks like [B, C, T, H, W]", "x.transpose(1, 2)"), "x.transpose(1, 2)."),
    E("forward-4d", "Inputs", "a 4-D tensor", ("forward", "unet-2d-small", (2, 1, 32, 32),
      torch.float32), ShapeError, "", ("5-D tensor [B, T, C, H, W]", "x.unsqueeze(1)"),
      "x.unsqueeze(1) for a batch of 2D images."),
    E("forward-int-dtype", "Inputs", "an integer tensor",
      ("forward", "unet-2d-small", (1, 1, 1, 32, 32), torch.int64), ShapeError, "",
      ("floating-point", "torch.int64", "x.float()"), "x.float()."),
    E("forward-hw", "Inputs", "a tensor whose H does not fit",
      ("forward", "unet-2d-small", (1, 1, 1, 24, 32), torch.float32), ShapeError,
      "unet.encoder[1]", ("must divide H=12", "nearest valid H: 16 or 32"),
      "use a listed size."),
    E("forward-not-tensor", "Inputs", "something that is not a tensor",
      ("forward", "unet-2d-small", None, None), ShapeError, "", ("expected a torch.Tensor",),
      "pass a torch.Tensor."),
    # ------------------------------------------------------------------ build arguments
    E("build-dtype", "Build arguments", "a non-floating dtype",
      ("build", "llm", {"dtype": torch.int64}), SpecError, "dtype", ("floating-point",),
      "torch.float32, bfloat16, float16 or float64."),
    E("build-device", "Build arguments", "an unknown device",
      ("build", "llm", {"device": "gpu0"}), SpecError, "device", ("not a torch device",),
      "'cpu', 'cuda', 'cuda:1'."),
    E("build-seed", "Build arguments", "a negative seed", ("build", "llm", {"seed": -1}),
      SpecError, "seed", ("integer in [0, 2**64)",), "use a seed >= 0."),
    E("build-in-channels", "Build arguments", "zero input channels",
      ("build", "llm", {"in_channels": 0}), SpecError, "in_channels", ("positive integer",),
      "in_channels >= 1."),
    # ------------------------------------------------------------------ resources
    E("resource-params", "Resources", "an absurd channel count (refused in milliseconds)",
      ("build", {"unet": {"channels": [1_000_000_000], "blocks": "L1"}}), ResourceError,
      "unet.encoder[0]", ("parameters", "over the limit", "max_params", "STCNNT_MAX_PARAMS",
                          "decoder.0 (spec path unet.encoder[0]) alone"),
      "fix the typo, or raise the limit (max_params=..., STCNNT_MAX_PARAMS)."),
    E("resource-memory", "Resources", "an input far too big for memory",
      ("check", "unet", (64, 64, 1, 512, 512)), ResourceError, "unet.encoder[0]",
      ("estimated memory", "TiB", "max_memory", "STCNNT_MAX_MEMORY"),
      "a smaller input, or raise the limit (max_memory=..., STCNNT_MAX_MEMORY)."),
    E("resource-cells", "Resources", "a million cells in one model",
      ("build", {"llm": {"channels": 8, "blocks": "(L1)*1000", "depth": 1000}}), ResourceError,
      "llm", ("1,000,000 cells", "16,384"), "fewer blocks or repetitions."),
    E("input-dimension-huge", "Resources", "an input dimension beyond 2^63",
      ("check", "unet", (1, 1, 1, 2**70, 64)), ShapeError, "", ("beyond 2^63",),
      "a real input size.", shown="stcnnt_dsl.check('unet', (1, 1, 1, 2**70, 64))"),
    E("resource-block", "Resources", "an absurd Block on its own",
      ("Block", "L1", 10**6, 10**6, {}), ResourceError, "Block",
      ("the block would have", "STCNNT_MAX_PARAMS"), "check in/out channels."),
    # ------------------------------------------------------------------ sources and YAML
    E("source-unknown", "Sources and YAML", "a misspelt bundled name", ("load", "unte"),
      SpecError, "", ('did you mean "unet"', "bundled"), "see stcnnt list."),
    E("source-missing-file", "Sources and YAML", "a file that does not exist",
      ("load", "missing.yaml"), SpecError, "", ("file not found",), "check the path."),
    E("source-type", "Sources and YAML", "an object that is no source", ("load", 42),
      SpecError, "", ("cannot load an architecture from int",), "a path, dict, text or name."),
    E("yaml-duplicate-key", "Sources and YAML", "a key given twice",
      ("file", "unet:\n  channels: [16]\n  channels: [32]\n  blocks: L1\n"), SpecError, (3, 3),
      ("duplicate key 'channels'", "line 2"), "keep one."),
    E("yaml-tag", "Sources and YAML", "a Python object tag (never constructed)",
      ("text", "unet: !!python/object/apply:os.system [ls]\n"), SpecError, (1, 7),
      ("tags are not allowed",), "write plain values."),
    E("yaml-alias", "Sources and YAML", "anchors and aliases (the alias bomb's tool)",
      ("text", "a: &x {channels: [16], blocks: L1}\nunet: *x\n"), SpecError, (1, 4),
      ("anchors and aliases",), "write the value out."),
    E("yaml-syntax", "Sources and YAML", "broken YAML",
      ("file", "unet:\n  channels: [16\n  blocks: L1\n"), DSLSyntaxError, (3, 9),
      ("invalid YAML",), "fix the brackets."),
    E("yaml-not-mapping", "Sources and YAML", "a document that is not a mapping",
      ("text", "- unet\n- hrnet\n"), SpecError, "", ("mapping with a topology key",),
      "start with unet:, hrnet: or llm:."),
    E("yaml-too-deep", "Sources and YAML", "nesting 10,000 levels deep",
      ("text", "unet: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"), SpecError, (1, 131),
      ("nesting deeper than 32",), "architecture files are shallow.",
      shown='stcnnt_dsl.load_spec("unet: " + "{a: " * 10_000 + "1" + "}" * 10_000)'),
    E("yaml-too-large", "Sources and YAML", "a YAML text over 1 MB",
      ("text", "unet:\n" + "#" * 2_000_000 + "\n"), SpecError, "",
      ("larger than 1000 kB",), "architecture files are a few hundred bytes.",
      shown='stcnnt_dsl.load_spec("unet:\\n" + "#" * 2_000_000)'),
    E("yaml-number-too-long", "Sources and YAML", "a number of 5,000 digits",
      ("text", "unet:\n  blocks: L1\n  channels: [" + "9" * 5_000 + "]\n"), SpecError, (3, 14),
      ("number too long",), "write the number you mean.",
      shown='stcnnt_dsl.load_spec("unet:\\n  blocks: L1\\n  channels: [" + "9" * 5_000 + "]")'),
    # ------------------------------------------------------------------ options no cell reads
    E("option-not-read-stage", "Options no cell reads", "a stage option that no cell of the "
      "stage reads (the decoder is not causal however often it says so)",
      ("file", "unet:\n  channels: [16]\n  blocks: L1G1\n  decoder:\n  - {causal: true}\n"),
      SpecError, (5, 6), ("arch.yaml:5:6", "unet.decoder[0].causal",
                          "not read by any cell of decoder.0", "temporal"),
      "remove it, or put it where a T cell reads it (or under `defaults:`)."),
    E("option-not-read-override", "Options no cell reads", "an override that no cell of its "
      "stage reads", ("build", unet(blocks="L1G1", overrides={"bridge": {"causal": True}})),
      SpecError, "unet.overrides.bridge.causal", ("not read by any cell of bridge",),
      "remove it, or set it on a stage with temporal cells."),
    E("option-not-read-topology", "Options no cell reads", "a topology option no cell reads",
      ("build", unet(blocks="L1", grid=2)), SpecError, "unet.grid",
      ("not read by any cell", "grid is read by global, vit cells"),
      "remove it, or move it to `defaults:` (where options may serve some cells only)."),
    E("option-not-read-inline", "Options no cell reads", "an inline option a cell without "
      "mixer cannot read", ("block", "L0[activation=relu]"), DSLSyntaxError, (1, 4),
      ("L0 does not read option 'activation'", "write L1"),
      "give the cell a mixer (`L1`) or drop the option."),
    E("option-not-read-block", "Options no cell reads", "a Block keyword a conv cell does not "
      "read", ("Block", "C2", 4, 4, {"mixer_ratio": 8}), SpecError, "Block.mixer_ratio",
      ("not read by any cell of Block (C2 (conv2d))",), "C2/C3 cells have no mixer: remove it."),
    E("option-qkv-kernel-linear", "Options no cell reads", "a Q/K/V kernel with linear Q/K/V",
      ("build", unet(qkv="linear", qkv_kernel=5)), SpecError, "unet.qkv_kernel",
      ("qkv_kernel is read only with qkv=conv",), "drop qkv_kernel, or use qkv=conv."),
    E("option-null", "Options no cell reads", "an option set to null (it used to mean the "
      "default, silently)", ("file", "unet:\n  channels: [16]\n  blocks: L1\n  window: null\n"),
      SpecError, (4, 11), ("window cannot be null",), "remove the key to keep the default."),
    # ------------------------------------------------------------------ time
    E("causal-mixing-norm", "Causal attention", "causal temporal attention with a norm whose "
      "statistics span frames", ("Block", "L1 T1[causal=true] G1 T1[causal=true]", 8, 8,
                                 {"norm": "instance3d"}),
      SpecError, "Block.norm", ("causal temporal attention cannot use norm=instance3d",
                                "later frames"), "use instance2d or layer norms."),
    E("causal-with-c3", "Causal attention", "a causal model with a C3 cell (it convolves over "
      "time)", ("build", unet(blocks="T1[causal=true] C3")), SpecError, "unet.blocks",
      ("C3 cell convolves over T",), "use C2, or drop causal."),
    E("batch-norm-one-value", "Inputs", "batch norm training with one value per channel",
      ("check", "unet(channels=[8, 8, 8], blocks=C2, norm=batch2d)", (1, 1, 1, 8, 8)),
      ShapeError, "unet.bridge", ("needs more than one value per channel in training",
                                  "1*1*1*1 = 1"),
      "a larger batch or input, or instance2d."),
    E("input-dtype", "Inputs", "a float64 input to a float32 model",
      ("forward", "llm", (1, 1, 1, 16, 16), torch.float64), ShapeError, "",
      ("the input is float64 but the weights are float32",), "convert the input or the model."),
    # ------------------------------------------------------------------ files and text
    E("yaml-tabs", "Sources and YAML", "tabs for indentation",
      ("file", "unet:\n\tchannels: [16]\n"), DSLSyntaxError, (2, 1),
      ("YAML does not allow tabs",), "indent with spaces."),
    E("yaml-empty", "Sources and YAML", "an empty (or comments-only) file",
      ("file", "# nothing here\n"), SpecError, None, ("empty (or only comments)",),
      "write a topology."),
    E("json-trailing-comma", "Sources and YAML", "a .json file that is not JSON (a trailing "
      "comma)", ("jsonfile", '{"unet": {"channels": [16], "blocks": "L1",}}'),
      DSLSyntaxError, (1, 44), ("invalid JSON",), "remove the trailing comma."),
    E("file-not-utf8", "Sources and YAML", "a Latin-1 file", ("bytes", "unet:\n  name: caf\xe9\n"),
      SpecError, None, ("not UTF-8", "line 2"), "save the file as UTF-8."),
    E("expression-tuple", "Sources and YAML", "a Python tuple in an expression",
      ("text", "unet(channels=[16], blocks=L1, window=(8, 4))"), DSLSyntaxError, (1, 40),
      ("square brackets, e.g. window=[8, 4]",), "write [8, 4]."),
    E("expression-capital-word", "Sources and YAML", "a Python boolean in an expression",
      ("text", "unet(channels=[16], blocks=L1, gate=True)"), DSLSyntaxError, (1, 37),
      ("write 'true'",), "write true / false."),
    E("expression-topology-case", "Sources and YAML", "a topology name in capitals",
      ("text", "UNet(channels=[16], blocks=L1)"), DSLSyntaxError, (1, 1),
      ("topology names are lower case: unet(...)",), "write unet(...)."),
    E("overrides-top-level", "Sources and YAML", "overrides at the top level",
      ("file", "unet:\n  channels: [16]\n  blocks: L1\noverrides: {bridge: {window: 4}}\n"),
      SpecError, (4, 1), ("overrides go under the topology key",), "indent it under unet:."),
    E("located-build-error", "Sources and YAML", "an error found while building the model, "
      "located in the file", ("file", "defaults: {heads: 3}\nunet:\n  channels: [16]\n"
                              "  blocks: L1\n"), SpecError, (1, 19),
      ("arch.yaml:1:19", "defaults.heads", "encoder.0 cell 0 (L1)"),
      "use a head count that divides the token size."),
    # ------------------------------------------------------------------ saving
    E("save-not-safetensors", "Weights files", "saving under a name that hides the format",
      ("save", "m.pt"), WeightsError, None, ("must end in .safetensors",),
      "name it m.safetensors."),
    E("save-to-folder", "Weights files", "saving onto a folder", ("save", "."), WeightsError,
      None, ("it is a folder",), "give a file name."),
    # ------------------------------------------------------------------ weights files
    E("weights-pickle", "Weights files", "a pickle (.pt) file given to load_model (never "
      "unpickled)", ("weights", "pickle"), WeightsError, None,
      ("model.safetensors", "not a readable safetensors file", "never unpickled"),
      "convert it to safetensors first."),
    E("weights-foreign", "Weights files", "a safetensors file without an stcnnt-dsl spec",
      ("weights", "foreign"), WeightsError, None,
      ("model.safetensors", "not written by stcnnt-dsl"),
      "load plain state dicts with load_state_dict."),
    E("weights-mismatch", "Weights files", "tensors that do not match the spec in the file",
      ("weights", "mismatch"), WeightsError, None,
      ("model.safetensors", "do not match the spec", "shape mismatches"),
      "save the model again with save_model."),
    # ------------------------------------------------------------------ training (issue 24)
    E("recipe-unknown-key", "Training recipes", "a misspelt recipe key",
      ("train", {**RECIPE, "optimzer": {"lr": 0.01}}), SpecError, "optimzer",
      ('did you mean "optimizer"',), "spell it optimizer.",
      shown="stcnnt_dsl.train({..., 'optimzer': {'lr': 0.01}})"),
    E("recipe-unknown-augment", "Training recipes", "an augmentation MONAI does not have",
      ("train", {**RECIPE, "data": {**RECIPE["data"], "augment": ["RandFlop"]}}), SpecError,
      "data.augment[0]", ('did you mean "RandFlip"',), "use one of the names listed.",
      shown="stcnnt_dsl.train({..., 'data': {..., 'augment': ['RandFlop']}})"),
    E("recipe-task-heads", "Training recipes", "heads that do not fit the task",
      ("train", {**RECIPE, "heads": {"label": {"kind": "classification", "classes": 2}}}),
      SpecError, "heads", ("task segment trains a segmentation head", "label (classification)"),
      "add a segmentation head, or drop heads: to get one.",
      shown="stcnnt_dsl.train({..., 'task': 'segment', 'heads': {'label': {'kind': "
            "'classification', 'classes': 2}}})"),
    E("recipe-patch", "Training recipes", "a patch the architecture cannot run",
      ("train", {**RECIPE, "data": {**RECIPE["data"], "patch": [1, 20, 20]}}), ShapeError,
      "data.patch", ("cannot run on patches of [1, 20, 20]", "nearest valid H: 16 or 24"),
      "use a patch the message names.",
      shown="stcnnt_dsl.train({..., 'data': {..., 'patch': [1, 20, 20]}})"),
    E("recipe-init-architecture", "Training recipes", "init weights of another architecture",
      ("train", {**RECIPE, "init": "other.safetensors"}, {"other": True}), WeightsError, None,
      ("init: other.safetensors cannot start this model", "in the model"),
      "start from weights of the same architecture (or part: backbone with strict: false).",
      shown="stcnnt_dsl.train({..., 'init': 'other.safetensors'})  # another U-Net's weights"),
    E("recipe-lora-targets", "Training recipes", "LoRA targets that match no stage",
      ("train", {**RECIPE, "adapt": {"method": "lora", "targets": ["decodr.*"]}}), SpecError,
      "adapt.targets", ("matches no stage", "encoder.0"), "use the stage names listed.",
      shown="stcnnt_dsl.train({..., 'adapt': {'method': 'lora', 'targets': ['decodr.*']}})"),
    E("train-folder-in-use", "Training recipes", "an output folder holding another run",
      ("train", RECIPE, {"existing": True}), TrainError, None,
      ("holds another run", "--resume", "--overwrite"),
      "resume it, overwrite it, or choose another folder.",
      shown="stcnnt_dsl.train(recipe, out='run')  # run/ holds an earlier run"),
    E("train-disk-full", "Training recipes", "a full disk while checkpointing",
      ("train", {**RECIPE, "steps": 2, "checkpoint_every": 1}, {"fault": "disk-full"}),
      TrainError, None, ("checkpoint at step 2 failed", "No space left", "(step 1) is intact"),
      "free space and run again with --resume.",
      shown="stcnnt_dsl.train({..., 'checkpoint_every': 1}, out='run')  # the disk fills up"),
    E("train-nan", "Training recipes", "a loss that turns NaN",
      ("train", {**RECIPE, "steps": 6, "checkpoint_every": 1,
                 "optimizer": {"lr": 1e30}}), TrainError, None,
      ("the loss is nan at step", "last good checkpoint is run/last.safetensors"),
      "lower the learning rate or add warm-up.",
      shown="stcnnt_dsl.train({..., 'optimizer': {'lr': 1e30}, 'checkpoint_every': 1})"),
    # ------------------------------------------------------------------ issue 20
    E("option-not-read-inline-value", "Options no cell reads", "an inline option the cell "
      "does not read with the values it has", ("Block", "L1[qkv=linear, qkv_kernel=5]", 4, 4,
      {"window": 4, "patch": 1}), SpecError, "Block",
      ("inline option 'qkv_kernel' is read by nothing", "read only with qkv=conv"),
      "drop qkv_kernel, or use qkv=conv."),
    # ------------------------------------------------------------------ issue 25
    E("mixed-unetr-one-level", "Reference models", "a one-level mixed U-Netr",
      ("load", {"mixed_unetr": {"channels": [8], "blocks": "L1"}}), SpecError,
      "mixed_unetr.channels", ("at least 2 levels", "does not run"), "give two or more levels."),
    E("upernet-first-frame-3d", "Reference models", "the upernet decoder's frame 0 only "
      "(the reference's UperNet2D) in mode 3d", ("build", {"mixed_unetr": {
          "channels": [4, 8], "blocks": "C2"}, "heads": {"seg": {
          "kind": "segmentation", "classes": 2, "decoder": "upernet", "mode": "3d",
          "frames": "first"}}}), SpecError, "heads.seg.frames", ("mode 2d option",),
      "drop frames, or use mode 2d."),
    E("reference-mixed-unetr-whole-levels", "Reference models", "a whole reference model "
      "with a 3-level mixed U-Netr (the reference's own factory gives its head the wrong "
      "channels)", ("reference_spec", {"backbone_model": "STCNNT_mUNET", "post_model":
      "UperNet3D", "backbone_mixed_unetr": {"num_resolution_levels": 3}}), SpecError,
      "post_model", ("do not run", "part='backbone'"), "import the backbone and add a head."),
    E("reference-omnivore", "Reference models", "the reference's omnivore backbone",
      ("reference_spec", {"backbone_model": "omnivore"}), SpecError, "backbone_model",
      ("not an ST-CNNT backbone", "SwinUNETR"), "use MONAI's SwinUNETR."),
    E("reference-backbone-only", "Reference models", "a backbone checkpoint whose "
      "configuration names a head (the reference parser's default NormPoolLinear)",
      ("import_backbone_only",), WeightsError, None,
      ("holds a backbone only", "part='backbone'", "post_model: Identity"),
      "import_reference(path, part='backbone').",
      shown="import_reference(backbone_state_dict, {**config, 'post_model': "
      "'NormPoolLinear'})"),
    # ------------------------------------------------------------------ issue 22: data
    E("data-truncated-dicom", "Imaging data", "a truncated DICOM file (pydicom's own "
      "MR_truncated.dcm)", ("data", "truncated-dicom"), DataError, None,
      ("scan.dcm", "cannot read it as DICOM", "truncated"), "export the file again.",
      shown='read_image("scan.dcm")  # pydicom\'s MR_truncated.dcm'),
    E("data-truncated-nifti", "Imaging data", "a NIfTI file cut short (an interrupted copy)",
      ("data", "truncated-nifti"), DataError, None, ("scan.nii.gz", "cannot read it as NIfTI"),
      "copy or export the file again.", shown='read_image("scan.nii.gz")  # its second half lost'),
    E("data-unknown-format", "Imaging data", "a file whose name says no image format",
      ("data", "unknown-format"), DataError, None, ("notes.txt", "cannot tell the image format"),
      "give a .nii.gz, .dcm, .png, .tif or .npy file (or a DICOM folder).",
      shown='read_image("notes.txt")'),
    E("data-4d-time", "Imaging data", "a 4D NIfTI with several slices read with T as time",
      ("data", "4d-time"), DataError, None, ("3 slices and 5 time points", "t_axis='slices'"),
      "read it with t_axis='slices' (time points as channels) or split it per slice.",
      shown='read_image("fmri.nii.gz", t_axis="time")  # shape (16, 16, 3, 5)'),
    E("data-two-series", "Imaging data", "a DICOM folder holding two series",
      ("data", "two-series"), DataError, None, ("dicom", "2 DICOM series", "own folder"),
      "one folder per series.",
      shown='read_image("dicom")  # CT_small.dcm and MR_small.dcm side by side'),
    E("data-missing-extra", "Imaging data", "the data extra not installed",
      ("data", "missing-extra"), DataError, None,
      ("needs nibabel", 'pip install "stcnnt-dsl[data]"'),
      "install the extra.", shown='read_image("scan.nii.gz")  # without nibabel installed'),
    E("data-empty-folder", "Data sets", "an empty data set folder", ("data", "empty"),
      DataError, None, ("empty", "holds no images"), "point at the data set's folder.",
      shown='open_dataset("empty")'),
    E("data-label-shape", "Data sets", "an image and its label of different shapes",
      ("data", "label-shape"), DataError, None,
      ("labelsTr/case_000.nii.gz", "(3, 1, 8, 10)", "(3, 1, 8, 8)", "resample the label"),
      "resample the label onto the image's grid (nearest neighbour).",
      shown='open_dataset("ds").load(0)  # label 8x10, image 8x8'),
    E("data-label-values", "Data sets", "label values that dataset.json does not list",
      ("data", "label-values"), DataError, None, ("label values [3]", "0 (background), 1 (organ)"),
      "add the value to dataset.json's labels, or fix the label map.",
      shown='open_dataset("ds").load(0)  # labels: {background: 0, organ: 1}; the map holds 3'),
    E("data-nan", "Data sets", "an image holding NaN values", ("data", "nan"), DataError, None,
      ("imagesTr/case_000_0000.nii.gz", "NaN or infinite"), "fix or mask them in the file.",
      shown='open_dataset("ds").load(0)  # the image holds NaN'),
    E("data-constant", "Data sets", "a constant image", ("data", "constant"), DataError, None,
      ("imagesTr/case_000_0000.nii.gz", "constant"), "remove the case or export it again.",
      shown='open_dataset("ds").load(0)  # every voxel 100'),
    E("data-channel-count", "Data sets", "cases with different channel counts",
      ("data", "channel-count"), DataError, None, ("case_001 has channel files 0000", "asks for 2"),
      "give every case one file per channel.",
      shown='open_dataset("ds")  # channel_names {0: T1, 1: T2}; case_001 has only _0000'),
    E("data-2d-to-3d-model", "Prediction", "a 2D PNG given to a model that mixes along T",
      ("data", "2d-to-3d"), DataError, None, ("slice.png", "2D (T=1)", "mixes along T"),
      "give a 2D+T clip or a 3D volume, or use a 2D model.",
      shown='predict_image(model, read_image("slice.png"))  # model: unet(..., blocks=T1L1)'),
    E("data-output-exists", "Prediction", "an output folder that already holds predictions",
      ("data", "output-exists"), DataError, None, ("pred", "already holds predictions",
                                                  "--overwrite"),
      "choose another --out, or pass --overwrite.",
      shown="stcnnt predict model.safetensors scan.nii.gz --out pred  # run twice"),
    # ------------------------------------------------------------------ issue 23: weights,
    # adaptation, layouts and sources, as a new user gets them wrong
    E("load-weights-onnx", "Weights and adaptation", "an ONNX file given to load_weights",
      ("code", _SEG + 'open("x.onnx", "wb").write(b"onnx")\n'
       'stcnnt_dsl.load_weights(model, "x.onnx")'), WeightsError, None,
      ("reads .safetensors files", "ONNX"), "load the .safetensors file the model was saved to."),
    E("load-weights-whole-into-backbone", "Weights and adaptation", "a whole model's file "
      "loaded into a backbone", ("code", _SEG + 'stcnnt_dsl.save_model(model, "seg.safetensors")'
      '\nbackbone = stcnnt_dsl.build("unet(channels=[8], blocks=L1, window=4)")\n'
      'stcnnt_dsl.load_weights(backbone, "seg.safetensors")'), WeightsError, None,
      ("holds a whole model", "part='backbone'"), "name the part: part='backbone'."),
    E("load-weights-nothing-fits", "Weights and adaptation", "a file whose tensors fit nothing "
      "of the model, with strict=False", ("code", _SEG + 'stcnnt_dsl.save_model('
      'stcnnt_dsl.build("llm(channels=8, blocks=[L1])"), "llm.safetensors")\n'
      'stcnnt_dsl.load_weights(model, "llm.safetensors", strict=False)'), WeightsError, None,
      ("no tensor that fits",), "load weights of the same architecture."),
    E("lora-modules-to-save", "Weights and adaptation", "modules_to_save naming a head the "
      "model does not have", ("code", _SEG + "import peft\nconfig = peft.LoraConfig(r=8, "
      'target_modules=stcnnt_dsl.lora_targets(model), modules_to_save=["heads.cls"])\n'
      "stcnnt_dsl.apply_lora(model, config)"), STCNNTError, None,
      ("'heads.cls' names no module", "heads.seg"), "name a head the model has."),
    E("lora-target-modules", "Weights and adaptation", "LoRA target modules of another "
      "library's naming", ("code", _SEG + "import peft\nconfig = peft.LoraConfig(r=8, "
      'target_modules=["q_proj", "v_proj"])\nstcnnt_dsl.apply_lora(model, config)'),
      STCNNTError, None, ("'q_proj' names no layer", "lora_targets(model)"),
      "target_modules=stcnnt_dsl.lora_targets(model)."),
    E("lora-config-dict", "Weights and adaptation", "a dict where a LoraConfig is expected",
      ("code", _SEG + 'stcnnt_dsl.apply_lora(model, {"r": 8})'), STCNNTError, None,
      ("takes a peft.LoraConfig",), "peft.LoraConfig(r=8, ...)."),
    E("lora-twice", "Weights and adaptation", "apply_lora on a model that already has adapters",
      ("code", _SEG + "import peft\nconfig = peft.LoraConfig(r=8, target_modules="
       "stcnnt_dsl.lora_targets(model))\nadapted = stcnnt_dsl.apply_lora(model, config)\n"
       "stcnnt_dsl.apply_lora(adapted, config)"), STCNNTError, None,
      ("already carries LoRA adapters", "merge_and_unload"),
      "train the adapted model, or merge first."),
    E("freeze-list", "Weights and adaptation", "freeze given a list of patterns",
      ("code", _SEG + 'stcnnt_dsl.freeze(model, ["encoder.*"])'), STCNNTError, None,
      ("separate strings", "*patterns"), "freeze(model, *patterns)."),
    E("freeze-nothing", "Weights and adaptation", "freeze without a pattern",
      ("code", _SEG + "stcnnt_dsl.freeze(model)"), STCNNTError, None,
      ("at least one stage pattern",), "name the stages, or 'backbone'."),
    E("param-groups-lr", "Weights and adaptation", "a negative learning rate",
      ("code", _SEG + "stcnnt_dsl.param_groups(model, lr=-1e-3)"), STCNNTError, None,
      ("lr must be",), "a positive lr."),
    E("layout-2d-temporal", "Layouts", "temporal cells in a 2D (BCHW) model",
      ("build", "unet(channels=[8], blocks=T1L1, window=4)", {"layout": "BCHW"}), SpecError,
      "layout", ("takes 2D images (one frame)", "is T"), "drop the T cells or use frames."),
    E("spec-onnx-file", "Sources and YAML", "an exported ONNX file given as the architecture "
      "(`stcnnt export seg.onnx`)", ("code", 'open("seg.onnx", "wb").write(bytes(2_000_000))\n'
      'stcnnt_dsl.export("seg.onnx", "x.onnx")'), SpecError, None,
      ("an ONNX file", "not an architecture"), "give the spec or the .safetensors model."),
    # ------------------------------------------------------------------ issue 21: tuning
    E("tuning-bad-value", "Per-machine choices", "a value STCNNT_TUNING does not know",
      ("tuning", "layout=nhwc", None), STCNNTError, None,
      ("STCNNT_TUNING='layout=nhwc'", "cannot read 'layout=nhwc'", "channels_last | nchw"),
      "write one of the values the message lists (docs/performance.md).",
      shown="os.environ['STCNNT_TUNING'] = 'layout=nhwc'  # or in the shell\n"
      "model = stcnnt_dsl.build('unet-2d-small')\nmodel(torch.ones(1, 1, 1, 32, 32))"),
    E("tuning-broken-cache", "Per-machine choices", "a tuning cache that is not one "
      "(edited or truncated by hand)", ("tuning", "", "{not json"), STCNNTError, None,
      ("tuning.json", "not a tuning cache", "stcnnt tune"),
      "delete the file and run `stcnnt tune` again.",
      shown="os.environ['STCNNT_CACHE_DIR'] = '.'\n"
      "Path('tuning.json').write_text('{not json')\n"
      "model = stcnnt_dsl.build('unet-2d-small')\nmodel(torch.ones(1, 1, 1, 32, 32))"),
    # ------------------------------------------------------------------ plan (issue 26)
    E("plan-budget-typo", "Plans", "a memory budget with a unit typo (`8G B`)",
      ("plan", 10, "8G B"), STCNNTError, None, ("'8G B' is not a budget", "8GiB", "8GB"),
      "write 8GiB (2^30 bytes) or 8GB (10^9 bytes).",
      shown='stcnnt_dsl.plan(fingerprint, memory="8G B")'),
    E("plan-budget-too-small", "Plans", "a budget too small for any valid patch",
      ("plan", 10, "256KiB"), STCNNTError, None,
      ("too small for any valid patch", "the smallest", "give --memory"),
      "give at least the memory the message names.",
      shown='stcnnt_dsl.plan(fingerprint, memory="256KiB", device="cpu")'),
    E("plan-empty-dataset", "Plans", "planning for an empty data set", ("plan", 0, "8GiB"),
      STCNNTError, None, ("is empty", "at least 2 cases"), "add cases.",
      shown='stcnnt_dsl.plan({"cases": 0, ...}, memory="8GiB")'),
    E("plan-single-case", "Plans", "planning for a data set of one case (nothing to "
      "validate on)", ("plan", 1, "8GiB"), STCNNTError, None, ("has one case", "at least 2"),
      "add cases, or plan from a larger data set and use --base.",
      shown='stcnnt_dsl.plan({"cases": 1, ...}, memory="8GiB")'),
    # ------------------------------------------------------------------ studio (issue 27)
    E("studio-path-outside", "Studio", "a path from a request (or a data set's own list) that "
      "leaves the folder given with --data (`..`, an absolute path, a link pointing out)",
      ("studio", "outside", "../secret.nii.gz"), OutsideFolderError, None,
      ("outside the folder given with --data", "opens nothing else"),
      "keep the data set's files inside its folder.",
      "# stcnnt studio --data data: a request or dataset.json naming ../secret.nii.gz"),
    E("studio-run-name", "Studio", "a run name that is a path", ("studio", "run", "../x"),
      STCNNTError, None, ("a run name is 1-64 letters",), "give a plain name such as run-2.",
      "# POST /api/runs/../x/stop"),
    E("studio-memory-budget", "Studio", "a memory budget that is not an amount of memory",
      ("studio", "budget", "lots"), STCNNTError, None,
      ("is not a budget", "GiB"), "write it like 4GiB or 512MiB.",
      "# the studio's Train panel: Memory = lots"),
    E("studio-no-runs", "Studio", "training without a runs folder", ("studio", "no-runs"),
      STCNNTError, None, ("--runs DIR",), "start the studio with --runs DIR.",
      "# stcnnt studio (no --data, no --runs), then Train"),
    # ------------------------------------------------------------------ issue 25 (session 3)
    E("mixed-unetr-halve-time-levels", "Reference models", "a mixed U-Netr that halves T at "
      "more levels than it has", ("load", {"mixed_unetr": {"channels": [8, 16], "blocks": "C2",
                                                           "halve_time": 3}}),
      SpecError, "mixed_unetr.halve_time", ("more than the 2 levels", "use 0 to 2"),
      "give at most one per level."),
    E("input-t-halved", "Inputs", "a T that a mixed U-Netr's halve_time cannot halve",
      ("check", {"mixed_unetr": {"channels": [8, 16], "blocks": "C2", "halve_time": 2}},
       (1, 6, 1, 32, 32)), ShapeError, "mixed_unetr",
      ("T a multiple of 4", "down.1 (patch merge (T too))", "T=6 is 3 frames there"),
      "use a multiple of 2^halve_time frames."),
    E("mixed-unetr-decoder-without-blocks", "Reference models", "options for mixed U-Netr "
      "decoder blocks while its decoder is convolution units", ("load", {"mixed_unetr": {
          "channels": [8, 16], "blocks": "C2", "decoder": [{"window": 4}, {}]}}),
      SpecError, "mixed_unetr.decoder", ("add decoder_blocks: true",),
      "add decoder_blocks: true, or drop decoder."),
    E("mixed-unetr-input-unit-without-partition", "Reference models", "a mixed U-Netr input "
      "unit without a window partition", ("load", {"mixed_unetr": {
          "channels": [8, 16], "blocks": "C2", "input_unit": True}}),
      SpecError, "mixed_unetr.input_unit", ("needs a partition stage",),
      "set partition: 2d or 3d, or drop input_unit."),
    # issue 23 (session 3)
    E("studio-text-is-a-path", "Studio", "a file's path typed into the studio's editor (texts "
      "sent by the page are never read as paths)", ("studio", "text", "/etc/passwd"),
      SpecError, None, ("never read as a file path",),
      "paste the file's contents, or start the studio with the file: stcnnt studio FILE.",
      "# the studio's editor: /etc/passwd"),
    E("text-very-long", "Sources and YAML", "a long text that is no spec (a paste of 20,000 "
      "brackets): the message quotes its start only", ("text", "[" * 20_000), SpecError, None,
      ("... (20,000 characters) is not a file",), "write YAML or an expression.",
      "stcnnt_dsl.load_spec('[' * 20_000)"),
    E("yaml-error-at-the-end", "Sources and YAML", "YAML that ends inside a bracket (the parser "
      "reports the line after the last: the error is placed at the text's end)",
      ("text", "unet:\n  channels: [16]\n  defaults: {"), DSLSyntaxError, (3, 14),
      ("invalid YAML",), "close the bracket: `defaults: {}` or a block mapping."),
]  # fmt: skip


# --------------------------------------------------------------------------- running


@functools.cache
def _model(name: str) -> torch.nn.Module:
    return build(name, seed=0)


def _run(call: tuple) -> Any:
    kind, *args = call
    if kind == "block":
        return parse_block(args[0])
    if kind == "load":
        return load_spec(args[0])
    if kind == "text":
        return load_spec(args[0])
    if kind == "file":
        Path("arch.yaml").write_text(args[0])
        return build("arch.yaml")
    if kind == "jsonfile":
        Path("arch.json").write_text(args[0])
        return load_spec("arch.json")
    if kind == "bytes":
        Path("arch.yaml").write_bytes(args[0].encode("latin-1"))
        return load_spec("arch.yaml")
    if kind == "save":
        return stcnnt_dsl.save_model(build({"llm": {"channels": 8, "blocks": "L1"}}), args[0])
    if kind == "build":
        return build(args[0], **(args[1] if len(args) > 1 else {}))
    if kind == "check":
        return check(args[0], args[1])
    if kind == "forward":
        name, shape, dtype = args
        x = [1.0, 2.0] if shape is None else torch.ones(shape, dtype=dtype)
        return _model(name)(x)
    if kind == "Block":
        text, cin, cout, options = args
        return Block(text, cin, cout, **options)
    if kind == "weights":
        return stcnnt_dsl.load_model(_weights_file(args[0]))
    if kind == "reference_spec":
        return reference_spec(args[0])
    if kind == "import_backbone_only":
        config = {"backbone_model": "STCNNT_UNET", "height": 16, "width": 16, "n_head": 2,
                  "window_size": [8, 8], "backbone_unet": {"C": 2, "num_resolution_levels": 1,
                  "block_str": ["C2"]}}  # fmt: skip
        state = {k: torch.zeros(1) for k in ("D0.block.cell_0.attn.conv.conv.weight",)}
        return import_reference(state, {**config, "post_model": "NormPoolLinear"})
    if kind == "data":
        return _data_mistake(args[0])
    if kind == "code":  # as written in the docs
        return exec(args[0], {"stcnnt_dsl": stcnnt_dsl})
    if kind == "tuning":
        return _with_tuning(*args)
    if kind == "train":
        return _train(*args)
    if kind == "plan":
        cases, memory = args
        fingerprint = {"cases": cases, "shape": {"median": [12, 101, 117]},
                       "spacing": {"median": [1.0, 1.5, 1.5]}}  # fmt: skip
        return stcnnt_dsl.plan(fingerprint, memory=memory, device="cpu")
    if kind == "studio":
        return _studio(*args)
    raise ValueError(kind)


def _nifti(path: str, data: Any) -> None:
    import nibabel

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)


def _nnunet(image: Any, label: Any, channels: int = 1) -> str:
    """ds/: an nnU-Net data set of one case (case_000) holding `image` and `label`."""
    import json

    _nifti("ds/imagesTr/case_000_0000.nii.gz", image)
    _nifti("ds/labelsTr/case_000.nii.gz", label)
    Path("ds/dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"T{c + 1}" for c in range(channels)},
        "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz",
    }))  # fmt: skip
    return "ds"


def _data_mistake(name: str) -> Any:
    """The data layer's mistakes (issue 22), made in the current folder."""
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file

    from stcnnt_dsl.data import open_dataset, read_image
    from stcnnt_dsl.data.files import predict_files
    from stcnnt_dsl.data.predict import predict_image

    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, (8, 8, 3)).astype(np.uint16)
    label = (image > 2000).astype(np.uint8)
    if name == "truncated-dicom":
        shutil.copy(get_testdata_file("MR_truncated.dcm", download=False), "scan.dcm")
        return read_image("scan.dcm")
    if name == "truncated-nifti":
        _nifti("scan.nii.gz", image)
        data = Path("scan.nii.gz").read_bytes()
        Path("scan.nii.gz").write_bytes(data[: len(data) // 2])
        return read_image("scan.nii.gz")
    if name == "unknown-format":
        Path("notes.txt").write_text("not an image")
        return read_image("notes.txt")
    if name == "4d-time":
        _nifti("fmri.nii.gz", rng.integers(0, 100, (16, 16, 3, 5)).astype(np.int16))
        return read_image("fmri.nii.gz", t_axis="time")
    if name == "two-series":
        Path("dicom").mkdir()
        for file in ("CT_small.dcm", "MR_small.dcm"):
            shutil.copy(get_testdata_file(file, download=False), Path("dicom") / file)
        return read_image("dicom")
    if name == "missing-extra":
        _nifti("scan.nii.gz", image)
        saved = sys.modules.get("nibabel")
        sys.modules["nibabel"] = None  # what Python does for a module that is not there
        try:
            return read_image("scan.nii.gz")
        finally:
            sys.modules["nibabel"] = saved
    if name == "empty":
        Path("empty").mkdir()
        return open_dataset("empty")
    if name == "label-shape":
        return open_dataset(_nnunet(image, np.zeros((8, 10, 3), np.uint8))).load(0)
    if name == "label-values":
        return open_dataset(_nnunet(image, label * 3)).load(0)
    if name == "nan":
        nan = np.where(label > 0, np.nan, image).astype(np.float32)
        return open_dataset(_nnunet(nan, label)).load(0)
    if name == "constant":
        return open_dataset(_nnunet(np.full((8, 8, 3), 100, np.uint16), label)).load(0)
    if name == "channel-count":
        _nnunet(image, label, channels=2)
        _nifti("ds/imagesTr/case_000_0001.nii.gz", image)
        _nifti("ds/imagesTr/case_001_0000.nii.gz", image)
        _nifti("ds/labelsTr/case_001.nii.gz", label)
        return open_dataset("ds")
    if name == "2d-to-3d":
        from PIL import Image as PILImage

        PILImage.fromarray(image[..., 0]).save("slice.png")
        return predict_image(_model(_T_MODEL), read_image("slice.png"))
    if name == "output-exists":
        stcnnt_dsl.save_model(_model(_T_MODEL), "model.safetensors")
        _nifti("scan.nii.gz", image)
        Path("pred").mkdir()
        _nifti("pred/scan.nii.gz", label)
        return predict_files("model.safetensors", ["scan.nii.gz"], "pred")
    assert pydicom  # the DICOM entries need pydicom (the data extra)
    raise ValueError(name)


_T_MODEL = "unet(channels=[4], blocks=T1L1, window=4, heads={s={kind=segmentation, classes=2}})"


def _with_tuning(forced: str, cache: str | None) -> Any:
    """A forward with STCNNT_TUNING = `forced` and a tuning cache holding `cache`."""
    from stcnnt_dsl.nn import tuning

    names = (tuning.ENV_TUNING, tuning.ENV_CACHE, tuning.ENV_CALIBRATE)
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({tuning.ENV_TUNING: forced, tuning.ENV_CACHE: ".",
                       tuning.ENV_CALIBRATE: "1"})  # fmt: skip
    if cache is not None:
        Path("tuning.json").write_text(cache)
    tuning.reset()
    try:
        return _model("unet-2d-small")(torch.ones(1, 1, 1, 32, 32))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tuning.reset()


@functools.cache
def _import_training() -> None:
    import monai.transforms  # noqa: F401
    import peft  # noqa: F401

    from stcnnt_dsl.train.recipe import AUGMENTS

    AUGMENTS()


def _train(recipe: dict, options: dict | None = None) -> Any:
    """stcnnt_dsl.train on an in-memory data set, with the mistake `options` names."""
    import train_fixtures

    from stcnnt_dsl.train import state

    options = options or {}
    Path("ds").mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        train_fixtures.install(patch, {"ds": train_fixtures.ShapesDataset("ds", n=3, frames=1,
                                                                          size=16)})  # fmt: skip
        if options.get("other"):
            other = build("unet(channels=[8], blocks=L1, window=4, patch=2, heads=1)")
            stcnnt_dsl.save_model(other, "other.safetensors")
        if options.get("existing"):
            Path("run").mkdir(exist_ok=True)
            Path("run/recipe.yaml").write_text("model: unet\n")
        if options.get("fault") == "disk-full":
            real = state.save_file

            def save_file(tensors: Any, path: str, metadata: Any = None) -> None:
                if Path("run/last.safetensors").exists():  # the second checkpoint
                    raise OSError(28, "No space left on device")
                real(tensors, path, metadata=metadata)

            patch.setattr(state, "save_file", save_file)
        return stcnnt_dsl.train(recipe, out="run", quiet=True)


def _studio(action: str, *args: Any) -> Any:
    from stcnnt_dsl.studio import folders, recipes, workbench

    if action == "outside":
        Path("data").mkdir(exist_ok=True)
        return folders.Folder("data", what="--data").inside(args[0])
    if action == "run":
        return folders.run_name(args[0])
    if action == "budget":
        return recipes.budget(args[0])
    if action == "no-runs":
        return workbench.Workbench(None, None)._runs()
    if action == "text":
        from stcnnt_dsl.studio import analysis

        return analysis.load_text(args[0])
    raise ValueError(action)


def _weights_file(variant: str) -> Path:
    """model.safetensors in the current folder, made wrong in the way `variant` says."""
    from safetensors.torch import save_file

    path = Path("model.safetensors")
    if variant == "pickle":
        torch.save({"weight": torch.zeros(2)}, path)
        return path
    if variant == "foreign":
        save_file({"weight": torch.zeros(2)}, str(path))
        return path
    stcnnt_dsl.save_model(build({"llm": {"channels": 8, "blocks": "L1"}}, seed=0), path)
    meta = stcnnt_dsl.tools.io.read_metadata(path)
    tensors = _load_safetensors(path)
    meta["spec"] = meta["spec"].replace("channels: 8", "channels: 16")
    save_file(tensors, str(path), metadata=meta)
    return path


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _raise(entry: Entry) -> STCNNTError:
    try:
        _run(entry.call)
    except STCNNTError as err:
        return err
    raise AssertionError(f"{entry.id}: no error raised")


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: e.id)
def test_catalogue_entry(entry: Entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    if "peft" in str(entry.call):
        import peft  # noqa: F401  (its import takes seconds: not the error's time)
    if entry.call[0] == "train":  # imported once (MONAI's transforms take seconds), untimed
        _import_training()
    start = time.process_time()
    err = _raise(entry)
    elapsed = time.process_time() - start
    assert type(err) is entry.error, (type(err), err)
    if isinstance(entry.where, tuple):
        assert (err.line, err.column) == entry.where, str(err)
    elif entry.where is not None:
        assert err.path == entry.where, (err.path, str(err))
    for word in entry.words:
        assert word in str(err), (word, str(err))
    assert "Traceback" not in str(err)
    # a mistake found while training (NaN, a full disk) comes after a few real steps
    limit = 10.0 if entry.call[0] == "train" else 2.0
    assert elapsed < limit, f"{entry.id} took {elapsed:.2f}s"


def test_catalogue_ids_are_unique():
    ids = [e.id for e in CATALOGUE]
    assert len(ids) == len(set(ids))


def test_absurd_channels_fail_fast_with_the_estimate():
    start = time.process_time()
    with pytest.raises(ResourceError) as info:
        build({"unet": {"channels": 1_000_000_000, "levels": 3, "blocks": "T1L1G1"}})
    assert time.process_time() - start < 0.5
    assert "parameters" in str(info.value) and "," in str(info.value)  # the count is shown


def test_every_error_is_a_value_error():
    for cls in (DSLSyntaxError, SpecError, ShapeError, ResourceError, WeightsError):
        assert issubclass(cls, STCNNTError) and issubclass(cls, ValueError)


# --------------------------------------------------------------------------- no asserts


def test_no_assert_statements_in_the_package():
    """Asserts vanish under `python -O`: validation must raise."""
    offenders = []
    for path in sorted((ROOT / "stcnnt_dsl").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        offenders += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Assert)
        ]
    assert not offenders, offenders


def test_validation_works_under_python_O(tmp_path: Path):
    """The same mistakes are caught with asserts stripped (`python -O`)."""
    import subprocess

    code = (
        "import stcnnt_dsl, sys\n"
        "for src in ['unet(channels=[16], blocks=L2)', {'unet': {'channels': [16], "
        "'blocks': 'L1', 'heads': 3}}]:\n"
        "    try:\n        stcnnt_dsl.build(src)\n    except stcnnt_dsl.STCNNTError:\n"
        "        continue\n    sys.exit('not caught: %r' % (src,))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout


# --------------------------------------------------------------------------- what just works


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({"window": [8, 16], "patch": [2, 4]}, (1, 2, 1, 32, 64)),  # non-square both
        ({"window": [4, 8], "patch": [4, 2], "grid": [2, 4]}, (1, 1, 1, 32, 64)),  # G: grid
        ({"window": 4, "patch": 2}, (2, 1, 1, 48, 16)),  # non-square image
        ({"window": [2, 8], "patch": [1, 4]}, (1, 3, 1, 8, 96)),  # 12:1 image
    ],
)
def test_non_square_windows_patches_and_images_work(options, shape):
    spec = {"defaults": options, "unet": {"channels": [8, 16], "blocks": "L1G1"}}
    check(spec, shape)
    model = build(spec, seed=0).eval()
    with torch.no_grad():
        y = model(torch.randn(shape))
    assert y.shape == (*shape[:2], 8, *shape[3:])
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------- the docs


def _show(entry: Entry) -> str:
    if entry.shown:
        return entry.shown
    kind, *args = entry.call
    if kind == "block":
        return f"stcnnt_dsl.parse_block({args[0]!r})"
    if kind in ("load", "text"):
        return f"stcnnt_dsl.load_spec({args[0]!r})"
    if kind == "file":
        return f"# arch.yaml\n{args[0]}# then: stcnnt_dsl.build('arch.yaml')"
    if kind == "jsonfile":
        return f"# arch.json\n{args[0]}\n# then: stcnnt_dsl.load_spec('arch.json')"
    if kind == "bytes":
        return f"# arch.yaml, saved as Latin-1\n{args[0]}# then: stcnnt_dsl.load_spec('arch.yaml')"
    if kind == "save":
        return f"stcnnt_dsl.save_model(model, {args[0]!r})"
    if kind == "build":
        extra = "".join(f", {k}={_value(v)}" for k, v in (args[1] if len(args) > 1 else {}).items())
        return f"stcnnt_dsl.build({args[0]!r}{extra})"
    if kind == "check":
        return f"stcnnt_dsl.check({args[0]!r}, {args[1]!r})"
    if kind == "forward":
        name, shape, dtype = args
        x = "[1.0, 2.0]" if shape is None else f"torch.ones({shape}, dtype={_value(dtype)})"
        return f"model = stcnnt_dsl.build({name!r})\nmodel({x})"
    if kind == "Block":
        text, cin, cout, options = args
        extra = "".join(f", {k}={v!r}" for k, v in options.items())
        return f"Block({text!r}, {cin}, {cout}{extra})"
    if kind == "data":
        return entry.shown or ""
    if kind == "code":
        return args[0]
    if kind == "weights":
        return {
            "pickle": 'torch.save(state_dict, "model.safetensors")',
            "foreign": 'safetensors.torch.save_file(state_dict, "model.safetensors")',
            "mismatch": "# model.safetensors saved by save_model, then its spec edited",
        }[args[0]] + '\nstcnnt_dsl.load_model("model.safetensors")'
    if kind == "reference_spec":
        return f"stcnnt_dsl.compat.reference_spec({args[0]!r})"
    raise ValueError(kind)


def _value(value: Any) -> str:
    return str(value) if isinstance(value, torch.dtype) else repr(value)


def render_catalogue() -> str:
    """The catalogue section of docs/errors.md (messages produced by running each entry)."""
    out: list[str] = [f"{len(CATALOGUE)} entries; each is a test in `tests/test_errors.py`."]
    group = None
    groups = list(dict.fromkeys(entry.group for entry in CATALOGUE))  # one heading each
    ordered = sorted(CATALOGUE, key=lambda entry: groups.index(entry.group))
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for entry in ordered:
                if entry.group != group:
                    group = entry.group
                    out.append(f"\n### {group}\n")
                err = _raise(entry)
                where = (
                    f"line {entry.where[0]}, column {entry.where[1]}"
                    if isinstance(entry.where, tuple)
                    else f"path `{entry.where}`"
                    if entry.where
                    else "no spec path"
                )
                out.append(f'<a id="{entry.id}"></a>**`{entry.id}`**: {entry.mistake}.')
                out.append(f"\n```python\n{_show(entry)}\n```\n")
                out.append(f"`{type(err).__name__}` ({where}):\n")
                out.append("```text\n" + str(err) + "\n```\n")
                out.append(f"Fix: {entry.fix}\n")
        finally:
            os.chdir(cwd)
    return "\n".join(out).strip()


def _doc_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index(START) + len(START) : text.index(END)].strip()


def test_docs_show_the_current_messages():
    assert _doc_section() == render_catalogue(), (
        "docs/errors.md is out of date: run `python tests/test_errors.py`"
    )


def _write_docs(render: Callable[[], str] = render_catalogue) -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{render()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    _write_docs()
    print(f"wrote {DOC} ({len(CATALOGUE)} entries)")
