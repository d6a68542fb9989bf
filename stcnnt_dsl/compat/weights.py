"""Reference `state_dict`s loaded into compiled backbones.

Every parameter and buffer of our backbone is mapped to the reference key(s) it comes
from (our fused Q/K/V weight is the concatenation of the reference's query, key and
value weights). The reference's `relative_position_index` buffers are checked against
our index formula and `attn.mask` buffers against a causal mask, then dropped; the
normalisation of a sequential cell without a mixer (`n2`, which the reference builds but
never uses) is dropped too. Anything else left over, anything missing, and any shape that
differs is a `WeightsError` naming the reference key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from ..graph.nodes import BlockNode, ConvUnitNode, GateNode, Node, PartitionNode
from ..models.backbone import Backbone
from ..models.build import build
from ..models.model import Model
from ..nn.attention import SpatialAttention, TemporalAttention
from ..nn.cells import AttentionCell, ConvCell
from ..nn.functional import relative_position_index
from ..nn.heads import UperNetHead
from .config import _flatten, reference_spec

__all__ = ["import_reference", "read_reference"]


def _node_prefix(topology: str, node: Node) -> str:
    """The reference module (with `.block.` where it has one) of one of our nodes."""
    m = node.meta
    if topology == "mixed_unetr":
        level = m.get("level")
        if isinstance(node, GateNode):
            return f"attention_{level}."
        head, _, _ = node.name.partition(".")
        block = ".block" * isinstance(node, BlockNode)
        name = {"encoder": f"D{level}.block.", "bridge": "bridge.block.",
                "down": f"down_{level}.block.", "up": f"up_{level}.block.",
                "skips": f"E{level}.", "decoder": f"U{level}{block}.",
                "partition": "conv_window_partition.", "partition_skip": "EW.",
                "input_unit": "E.", "partition_decoder": f"UW{block}.",
                "partition_up": "up_w.block."}[head]  # fmt: skip
        return name
    if topology == "unet":
        level = m.get("level")
        if isinstance(node, GateNode):
            return f"attention_{level}."
        head, _, _ = node.name.partition(".")
        name = {"encoder": f"D{level}", "decoder": f"U{level}", "bridge": "bridge",
                "down": f"down_{level}", "up": f"up_{level}"}[head]  # fmt: skip
        return f"{name}.block."
    if isinstance(node, BlockNode):
        if "stage" in m:
            return f"B{m['level']}{m['stage']}.block."
        return f"output_B{m['level']}.block."
    a, b = m["from"], m["to"]
    if node.name.startswith("exchange."):
        j = m["stage"]
        return f"down_{a}{j - 1}_{b}{j}.block."
    if node.name.startswith("upsample."):
        return f"up_{a}.block."
    return f"{'down' if b > a else 'up'}_{a}_{b}.block."


_RESAMPLE = [
    (r"merges\.(\d+)\.conv\.weight", "D2_{1}.conv.conv.weight"),
    (r"convs\.(\d+)\.weight", "U2_{1}.conv.conv.weight"),
]
_GATE = {"query.weight": "conv_query.conv.weight", "key.weight": "conv_x.conv.weight",
         "psi.weight": "conv_gate.conv.weight"}  # fmt: skip


def _norm_name(prefix: str, norm: nn.Module, rest: str) -> str:
    # The reference's LayerNorm is the module itself; batch norms sit in `.bn`.
    return f"{prefix}.{rest}" if norm.kind == "layer" else f"{prefix}.bn.{rest}"


def _cell_names(cell: nn.Module, key: str) -> list[str] | None:
    """Reference names (inside the cell) of our cell-local `key`; None if unknown."""
    head, _, rest = key.partition(".")
    if head == "norm1":
        return [_norm_name("n1", cell.norm1, rest.partition(".")[2])]
    if head == "norm2":
        where = "n2" if isinstance(cell, AttentionCell) else "attn.n1"
        return [_norm_name(where, cell.norm2, rest.partition(".")[2])]
    if head == "proj":
        return [f"input_proj.conv.{rest}"]
    if isinstance(cell, ConvCell):
        return {"conv": [f"attn.conv.conv.{rest}"], "act": [f"attn.act_func.{rest}"]}.get(head)
    if head == "mixer":
        index, _, leaf = rest.partition(".")
        return [f"mlp.{index}.{leaf}" if index == "1" else f"mlp.{index}.conv.{leaf}"]
    if head != "attn":
        return None
    attn = cell.attn
    part, _, leaf = rest.partition(".")
    kind = "linear" if getattr(attn, "qkv_mode", "conv") == "linear" else "conv"
    fused = {"qkv": ("query", "key", "value"), "qk": ("query", "key"), "v": ("value",)}
    if part in fused:
        return [f"attn.{name}.{kind}.{leaf}" for name in fused[part]]
    if part == "proj":
        return [f"attn.output_proj.conv.{leaf}"]
    if part == "bias_table":
        return ["attn.relative_position_bias_table"]
    return None


def _conv_unit_name(unit: nn.Module, key: str) -> str | None:
    """The reference name (inside `E<i>` / `U<i>`) of a `ConvUnit` key."""
    head, _, rest = key.partition(".")
    if head in ("conv1", "conv2"):
        return f"{head}.conv.{rest}"
    if head in ("act1", "act2"):
        return f"nl{head[-1]}.{rest}"
    if head in ("norm1", "norm2"):
        return _norm_name(head, getattr(unit, head), rest.partition(".")[2])
    return None


# Our head keys -> the reference's `post.` keys (a rename inside the head).
_HEAD_KEYS = {"conv.weight": "conv2d.conv.weight", "conv.bias": "conv2d.conv.bias"}
_UPERNET_KEYS = [
    (r"psp\.stages\.(\d+)\.conv\.(.*)", "PPN.stages.{0}.1.{1}"),
    (r"psp\.stages\.(\d+)\.norm\.(.*)", "PPN.stages.{0}.2.{1}"),
    (r"psp\.bottleneck\.conv\.(.*)", "PPN.bottleneck.0.{0}"),
    (r"psp\.bottleneck\.norm\.(.*)", "PPN.bottleneck.1.{0}"),
    (r"fpn\.smooth\.(\d+)\.(.*)", "FPN.smooth_conv.{0}.{1}"),
    (r"fpn\.fuse\.conv\.(.*)", "FPN.conv_fusion.0.{0}"),
    (r"fpn\.fuse\.norm\.(.*)", "FPN.conv_fusion.1.{0}"),
    (r"(head\..*)", "{0}"),
]


def _head_key(head: nn.Module, key: str) -> str:
    """The reference's name (inside `post.`) of a head's state_dict key."""
    if isinstance(head, UperNetHead):
        lateral = re.fullmatch(r"fpn\.lateral\.(\d+)\.(.*)", key)
        if lateral:  # the reference has no lateral conv for the finest feature
            return f"FPN.conv1x1.{int(lateral[1]) - 1}.{lateral[2]}"
        for pattern, template in _UPERNET_KEYS:
            match = re.fullmatch(pattern, key)
            if match:
                return template.format(*match.groups())
    return _HEAD_KEYS.get(key, key)


def _reference_names(model: nn.Module) -> tuple[dict[str, list[str]], dict[str, Callable]]:
    """(our state_dict key -> reference keys, optional reference key -> its checker),
    node by node over the model graph. A whole model's keys are `backbone.*` and
    `heads.<name>.*`, the reference's `backbone.*` and `post.*`."""
    names: dict[str, list[str]] = {}
    optional: dict[str, Callable] = {}
    graph = model.graph
    whole = isinstance(model, Model)
    backbone = model.backbone if whole else model
    ours, theirs = ("backbone.", "backbone.") if whole else ("", "")
    for node in graph.nodes:
        if not node.has_module:
            continue
        module = backbone.get_submodule(node.name)
        prefix = theirs + _node_prefix(graph.topology, node)
        for key in module.state_dict():
            found = None
            cell_match = re.match(r"cells\.(\d+)\.(.*)", key)
            if isinstance(node, BlockNode) and cell_match:
                cell = module.cells[int(cell_match[1])]
                local = _cell_names(cell, cell_match[2])
                found = (
                    None if local is None else [f"{prefix}cell_{cell_match[1]}.{n}" for n in local]
                )
            elif isinstance(node, GateNode):
                found = [prefix + _GATE[key]] if key in _GATE else None
            elif isinstance(node, PartitionNode):
                found = [prefix + key]
            elif isinstance(node, ConvUnitNode):
                local = _conv_unit_name(module, key)
                found = None if local is None else [prefix + local]
            else:
                for pattern, template in _RESAMPLE:
                    match = re.fullmatch(pattern, key)
                    if match:
                        found = [prefix + template.format("", *match.groups())]
            if found is None:  # pragma: no cover - a module this mapping does not know
                raise WeightsError(f"no reference name is known for our weight {node.name}.{key!r}")
            names[f"{ours}{node.name}.{key}"] = found
        if isinstance(node, BlockNode):
            for c, cell in enumerate(module.cells):
                _optional_names(cell, f"{prefix}cell_{c}.", optional)
    if graph.topology == "mixed_unetr" and graph.spec.body.gate:
        for name in unused_reference_modules():
            optional[theirs + name] = lambda t: None
    if whole:
        for name, head in model.heads.items():
            for key in head.state_dict():
                names[f"heads.{name}.{key}"] = [f"post.{_head_key(head, key)}"]
    return names, optional


def unused_reference_modules() -> tuple[str, ...]:
    """Weights the reference's gated mixed U-Netr builds but its forward never uses:
    `attention_0` (level 0's up-sampled input has 2C channels, its skip C, so the gate is
    skipped) and `attention_w` (for the window partition, off). They are counted in its
    parameter count and ignored on import."""
    return tuple(
        f"attention_{level}.conv_{part}.conv.weight"
        for level in ("0", "w")
        for part in ("query", "x", "gate")
    )


def _optional_names(cell: nn.Module, prefix: str, optional: dict[str, Callable]) -> None:
    """Reference keys that carry no information we load: checked (buffers) or unused."""
    attn = getattr(cell, "attn", None)
    if isinstance(attn, SpatialAttention) and attn.bias_table is not None:
        expected = relative_position_index(attn.bias_extent).flatten()
        optional[f"{prefix}attn.relative_position_index"] = lambda t, e=expected: _same_index(t, e)
    if isinstance(attn, TemporalAttention):
        optional[f"{prefix}attn.mask"] = _is_causal_mask
    sequential_unused = isinstance(cell, AttentionCell) and cell.norm2 is None and not cell.parallel
    if sequential_unused or isinstance(cell, ConvCell):
        for leaf in ("weight", "bias", "bn.weight", "bn.bias", "bn.running_mean",
                     "bn.running_var", "bn.num_batches_tracked"):  # fmt: skip
            optional[f"{prefix}n2.{leaf}"] = lambda t: None


def _same_index(tensor: Tensor, expected: Tensor) -> str | None:
    if tuple(tensor.shape) != tuple(expected.shape) or not torch.equal(tensor.long(), expected):
        return (
            f"has shape {tuple(tensor.shape)} but differs from the relative position index "
            f"of a {tuple(expected.shape)} token grid (expected {tuple(expected.shape)})"
        )
    return None


def _is_causal_mask(tensor: Tensor) -> str | None:
    square = tensor.dim() >= 2 and tensor.shape[-1] == tensor.shape[-2]
    causal = torch.ones_like(tensor, dtype=torch.bool).tril()
    if not square or not torch.equal(tensor.bool(), causal):
        return "is not a lower-triangular causal mask"
    return None


def read_reference(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict | None]:
    """(state_dict, config or None) of a reference checkpoint in safetensors format.

    Keys prefixed `weight::` (the layout of the fixtures in shared/reference) are taken
    without the prefix and other tensors are ignored; the metadata entry `config` (JSON)
    is the configuration.
    """
    from safetensors import safe_open

    file = Path(path)
    try:
        found = file.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        found = False
    if not found:
        raise WeightsError(f"weights file not found: {str(file)[:200]}")
    if file.suffix != ".safetensors":
        raise WeightsError(
            f"{file.name}: only .safetensors files are read (pickled .pth/.pt checkpoints "
            "can run code when loaded); convert with safetensors.torch.save_file"
        )
    try:
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
            tagged = [k for k in keys if k.startswith("weight::")]
            wanted = tagged or keys
            tensors = {k.removeprefix("weight::"): handle.get_tensor(k) for k in wanted}
    except (OSError, ValueError, RuntimeError) as err:  # safetensors' own errors
        raise WeightsError(f"{file.name} is not a readable safetensors file: {err}") from None
    config = metadata.get("config")
    if config is not None:
        try:
            config = json.loads(config)
        except json.JSONDecodeError as err:
            raise WeightsError(f"{file.name}: metadata 'config' is not JSON: {err}") from None
    return tensors, config


def _strip_prefix(weights: Mapping[str, Tensor], first: str) -> dict[str, Tensor]:
    """Drop a wrapper prefix (`backbone.`, `module.`) when the keys carry one; keys
    outside it (a whole model's `post.*`, say) are an error, not silently left out."""
    if first in weights:
        return dict(weights)
    prefixes = {k[: -len(first)] for k in weights if k.endswith("." + first)}
    if len(prefixes) != 1:
        return dict(weights)
    prefix = prefixes.pop()
    outside = sorted(k for k in weights if not k.startswith(prefix))
    if outside:
        raise WeightsError(
            f"the checkpoint has {outside[0]!r} besides the {prefix}* weights (a whole model?), "
            "but its configuration names no head (post_model); give the configuration its "
            "post_model, or load only the backbone: load_weights(model, path, part='backbone')"
        )
    return {k[len(prefix) :]: v for k, v in weights.items()}


_POINTWISE_3D = re.compile(
    r"(.*\.)?(attention_\w+\.conv_(query|x|gate)|down_\d+\.block\.D2_\d+\.conv)\.conv\.weight"
)


def reference_tensor(weights: Mapping[str, Tensor], key: str) -> Tensor:
    """`weights[key]` in the shape our module takes: the mixed U-Netr's gates and its
    patch merging that halves T are 1x1x1 `Conv3d`s ([o, i, 1, 1, 1]), ours 1x1
    `Conv2d`s (the same map per frame)."""
    tensor = weights[key]
    if tensor.dim() == 5 and tensor.shape[-3:] == (1, 1, 1) and _POINTWISE_3D.fullmatch(key):
        return tensor.squeeze(-1)
    return tensor


def _assemble(
    names: dict[str, list[str]], target: dict[str, Tensor], weights: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for key, refs in names.items():
        missing = [r for r in refs if r not in weights]
        if missing:
            raise WeightsError(
                f"missing reference weight {missing[0]!r} (needed for {key!r}); the "
                "checkpoint does not match its configuration"
            )
        want = tuple(target[key].shape)
        part = (want[0] // len(refs), *want[1:]) if want else want
        fitted = {r: reference_tensor(weights, r) for r in refs}
        for ref in refs:
            if tuple(fitted[ref].shape) != part:
                raise WeightsError(
                    f"shape mismatch for reference weight {ref!r}: checkpoint "
                    f"{tuple(weights[ref].shape)}, model built from the configuration {part}"
                )
        parts = [fitted[r] for r in refs]
        state[key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return state


def import_reference(
    weights: str | os.PathLike | Mapping[str, Tensor],
    config: Any = None,
    *,
    part: str | None = None,
) -> Backbone | Model:
    """A `Backbone` carrying a reference checkpoint's weights, with the same outputs; a
    `Model` with one head (named by its task) for a whole-model checkpoint (keys
    `backbone.*` and `post.*`, the head named by the configuration's `post_model`).

    `weights`: a `.safetensors` path (its metadata `config` is used when `config` is
    None) or a reference `state_dict`. `config`: the reference configuration (see
    `reference_spec`). The model takes our layout [B, T, C, H, W] (the reference backbone
    takes [B, C, T, H, W]: use `x.transpose(1, 2)`), and is returned in training mode like
    any new module: call `.eval()` for inference.

    `part="backbone"`: the `Backbone` only, whatever head the configuration names (a
    backbone checkpoint, or the backbone of a whole one). A checkpoint without `post.*`
    weights whose configuration names a head (the reference's parser fills in
    `post_model: NormPoolLinear`) is refused with a message that says to use it.
    """
    if part not in (None, "backbone"):
        raise WeightsError(f"part must be None (all) or 'backbone', got {part!r}")
    if isinstance(weights, (str, os.PathLike)):
        weights, stored = read_reference(weights)
        config = stored if config is None else config
    elif not isinstance(weights, Mapping):
        raise WeightsError(
            f"weights must be a .safetensors path or a state_dict, got {type(weights).__name__}"
        )
    if config is None:
        raise WeightsError(
            "no configuration: pass config= (the reference configuration dict); only "
            "safetensors files with a 'config' metadata entry carry their own"
        )
    if part == "backbone":
        config = {**_flatten(config), "post_model": "Identity"}
        if any(k.startswith("backbone.") for k in weights):  # a whole model's backbone
            weights = {k[9:]: v for k, v in weights.items() if k.startswith("backbone.")}
    spec = reference_spec(config)
    if spec.heads and not any(k.startswith("post.") or ".post." in k for k in weights):
        post = _flatten(config).get("post_model")
        raise WeightsError(
            f"the checkpoint holds a backbone only (no post.* weights), but its configuration "
            f"names the head post_model={post!r} (the reference's parser fills in "
            "NormPoolLinear when none is given); import the backbone with "
            "import_reference(path, part='backbone') (stcnnt import-reference --part "
            "backbone), or set post_model: Identity in the configuration"
        )
    model = build(spec)
    names, optional = _reference_names(model)
    weights = _strip_prefix(weights, next(iter(names.values()))[0])
    target = model.state_dict()
    state = _assemble(names, target, weights)
    used = {r for refs in names.values() for r in refs}
    extra = sorted(k for k in weights if k not in used and k not in optional)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WeightsError(
            f"unexpected reference weight {extra[0]!r}{more}: the model built from the "
            "configuration has no place for it; the checkpoint does not match its configuration"
        )
    for key in sorted(k for k in weights if k in optional):
        problem = optional[key](weights[key])
        if problem:
            raise WeightsError(f"reference buffer {key!r} {problem}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return model
