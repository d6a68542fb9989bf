"""Adapting a trained model to a new task with few labels: which layers LoRA should
adapt, which parameters weight decay should leave alone, freezing stages by name.

    import peft
    model = stcnnt_dsl.build("unet(..., heads={seg={kind=segmentation, classes=2}})")
    stcnnt_dsl.load_weights(model, "pretrained.safetensors", part="backbone")
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=stcnnt_dsl.lora_targets(model),
                             modules_to_save=["heads.seg"])
    model = apply_lora(model, config)          # PEFT, with our layers' padding kept
    optimizer = torch.optim.AdamW(stcnnt_dsl.param_groups(model, lr=1e-3, weight_decay=0.05))

PEFT is an optional extra (`pip install "stcnnt-dsl[adapt]"`); everything here but
`apply_lora` works without it.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from torch import nn

from ..errors import STCNNTError
from ..models.model import Model
from .io import unwrap

__all__ = ["apply_lora", "freeze", "lora_targets", "param_groups"]

# Inside a cell: the Q/K/V maps (one fused conv or linear; T with a Q/K stride: qk and v)
# and the mixer's two convolutions.
_TARGET = re.compile(r"(^|\.)cells\.\d+\.(attn\.(qkv|qk|v)|mixer\.[02])$")


def lora_targets(model: nn.Module, *stages: str) -> list[str]:
    """Module names for PEFT's `LoraConfig(target_modules=...)`: the Q/K/V convolutions
    (or linear maps) and the mixer convolutions of every cell, as full names (PEFT
    matches them exactly). With stage patterns (`fnmatch`, as in `freeze`: "decoder.*",
    "bridge", "level2.*"), only the cells of those stages: the stages before them then
    need no gradient at all, which saves their activation memory in training."""
    model = _built(model)
    prefix = "backbone." if isinstance(model, Model) else ""
    names = [
        name
        for name, module in model.named_modules()
        if _TARGET.search(name)
        and isinstance(getattr(module, "base_layer", module), (nn.Conv2d, nn.Linear))
    ]  # (a PEFT LoRA layer wraps the layer it adapts as `base_layer`)
    if not names:
        raise STCNNTError(
            "this model has no attention or mixer layers for LoRA to adapt (conv cells only?)"
        )
    if stages:
        known = [name for name, _ in _stages(model) if not name.startswith("heads.")]
        chosen = set()
        for pattern in stages:
            hits = [n for n in known if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise STCNNTError(
                    f"lora_targets: {pattern!r} matches no stage; stages: {', '.join(known)}"
                )
            chosen.update(hits)
        names = [n for n in names if any(n.startswith(f"{prefix}{s}.") for s in chosen)]
        if not names:
            raise STCNNTError(
                f"lora_targets: the stages {sorted(chosen)} have no attention or mixer layers"
            )
    return names


def _built(model: nn.Module) -> nn.Module:
    base = getattr(model, "get_base_model", None)  # PEFT's wrapper (apply_lora's result)
    model = unwrap(base() if callable(base) else model)
    if not hasattr(model, "graph"):
        raise STCNNTError(f"expected a model built by stcnnt_dsl.build, got {type(model).__name__}")
    return model


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every graph node with a module, and of every head, in order."""
    graph = model.graph
    backbone = model.backbone if isinstance(model, Model) else model
    out = [(n.name, backbone.get_submodule(n.name)) for n in graph.nodes if n.has_module]
    if isinstance(model, Model):
        out += [(f"heads.{name}", head) for name, head in model.heads.items()]
    return out


def _check_patterns(action: str, patterns: tuple) -> None:
    if not patterns:
        raise STCNNTError(
            f"{action} needs at least one stage pattern, e.g. {action}(model, 'encoder.*', "
            "'bridge'), or 'backbone' for all of the backbone"
        )
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise STCNNTError(
                f"{action} takes stage patterns as separate strings: {action}(model, "
                f"'encoder.*', 'bridge'), not a {type(pattern).__name__} ({pattern!r}); "
                f"unpack a list with {action}(model, *patterns)"
            )


def freeze(model: nn.Module, *patterns: str, trainable: bool = False) -> list[str]:
    """Stop training the stages whose names match a pattern (`fnmatch`: "encoder.*",
    "bridge", "level0.*", "heads.seg", or "backbone" for all of it); `trainable=True`
    undoes it. Returns the names it changed; a pattern that matches nothing is an error
    (a typo should not silently train everything)."""
    model = _built(model)
    _check_patterns("freeze", patterns)
    stages = _stages(model)
    if isinstance(model, Model):
        stages.append(("backbone", model.backbone))
    changed = []
    for pattern in patterns:
        hits = [(name, m) for name, m in stages if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            names = ", ".join(name for name, _ in stages)
            raise STCNNTError(f"freeze: {pattern!r} matches no stage; stages: {names}")
        for name, module in hits:
            for param in module.parameters():
                param.requires_grad_(trainable)
            changed.append(name)
    return changed


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: no weight decay on bias tables, norms and biases
    (`model.no_weight_decay()`); with `layer_decay` (e.g. 0.75), stage k of n (in the
    order the model runs them) learns at lr * layer_decay ** (n - k), the heads at lr:
    the layer-wise decay of fine-tuning. Frozen parameters are left out."""
    model = _built(model)
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise STCNNTError(f"param_groups: {name} must be a number >= 0, got {value!r}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise STCNNTError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    no_decay = model.no_weight_decay()
    prefix = "backbone." if isinstance(model, Model) else ""
    stages = _stages(model)
    backbone = [name for name, _ in stages if not name.startswith("heads.")]
    depth = {name: k + 1 for k, name in enumerate(backbone)}
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for full, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        if layer_decay is not None:
            stage = next((n for n in backbone if full.startswith(f"{prefix}{n}.")), None)
            if stage is not None:
                scale = layer_decay ** (len(backbone) + 1 - depth[stage])
        decay = full not in no_decay
        group = groups.setdefault(
            (decay, scale),
            {"params": [], "names": [], "lr": lr * scale,
             "weight_decay": weight_decay if decay else 0.0},
        )  # fmt: skip
        group["params"].append(param)
        group["names"].append(full)
    return list(groups.values())


def apply_lora(model: nn.Module, config: Any) -> nn.Module:
    """`peft.get_peft_model(model, config)`, with the LoRA convolutions padding the way
    the layers they adapt do (PEFT pads with zeros; a layer with reflect padding would
    otherwise give different outputs before and after merging)."""
    try:
        import peft
    except ImportError:
        raise STCNNTError(
            'LoRA needs PEFT: pip install "stcnnt-dsl[adapt]" (or pip install peft)'
        ) from None
    if not isinstance(config, peft.PeftConfig):
        raise STCNNTError(
            f"apply_lora takes a peft.LoraConfig, got a {type(config).__name__}: "
            "peft.LoraConfig(r=8, lora_alpha=16, target_modules=lora_targets(model))"
        )
    if hasattr(model, "peft_config"):
        raise STCNNTError(
            "apply_lora: this model already carries LoRA adapters (apply_lora's result); "
            "train it as it is, or fold them in first: model = model.merge_and_unload()"
        )
    built = _built(model)
    names = [name for name, _ in built.named_modules() if name]
    targets = getattr(config, "target_modules", None)
    if isinstance(targets, list | set | tuple):
        lost = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if lost:
            raise STCNNTError(
                f"LoraConfig(target_modules=...): {sorted(lost)[0]!r} names no layer of this "
                "model (PEFT matches whole names or their last parts); use "
                "target_modules=stcnnt_dsl.lora_targets(model), the Q/K/V and mixer layers"
            )
    heads = [n for n, _ in _stages(built) if n.startswith("heads.")]
    for wanted in getattr(config, "modules_to_save", None) or []:
        if not any(n == wanted or n.endswith("." + wanted) for n in names):
            raise STCNNTError(
                f"LoraConfig(modules_to_save=...): {wanted!r} names no module of this model, "
                f"so nothing of it would train; its heads: {', '.join(heads) or 'none'}"
            )
    adapted = peft.get_peft_model(model, config)
    for module in adapted.modules():
        base = getattr(module, "base_layer", None)
        lora_a = getattr(module, "lora_A", None)
        if isinstance(base, nn.Conv2d) and isinstance(lora_a, nn.ModuleDict):
            for conv in lora_a.values():
                conv.padding_mode = base.padding_mode
    return adapted
