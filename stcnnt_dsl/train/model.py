"""The model a recipe trains: its spec (from `model`, with `heads` and the data's
channels and classes), its starting weights (a `.safetensors` model, `init`), and what
trains (`adapt`: everything, LoRA adapters with the heads, or the heads alone)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..errors import ShapeError, SpecError, STCNNTError, WeightsError
from ..graph import check
from ..language.spec import dump_spec, load_source
from ..models import build
from ..tools.adapt import apply_lora, freeze, lora_targets
from ..tools.io import read_metadata, unwrap
from ..tools.weights import load_weights
from .recipe import HEAD_OF_TASK, RecipeSource

__all__ = ["Prepared", "merged", "prepare_model", "spec_of"]


@dataclass
class Prepared:
    """The model to train (maybe PEFT-wrapped), the head the loss reads, the spec."""

    model: nn.Module
    head: str
    spec: dict[str, Any]
    trainable: int
    total: int


def _model_source(src: RecipeSource) -> tuple[Any, Path | None]:
    """(what load_spec reads, the .safetensors file to start from or None)."""
    value = src.recipe.model
    if isinstance(value, str) and "\n" not in value and "(" not in value:
        if value.endswith(".safetensors"):
            path = src.resolve(value)
            try:
                meta = read_metadata(path)
            except WeightsError as err:
                raise SpecError(str(err), "model") from None
            return load_source(meta["spec"], read_files=False), path
        if value.endswith((".yaml", ".yml", ".json")):
            return src.resolve(value), None
    return value, None


def spec_of(src: RecipeSource, channels: int, classes: int | None) -> tuple[dict, str, Path | None]:
    """The spec as plain data with the task's head, and the head's name."""
    recipe = src.recipe
    source, weights = _model_source(src)
    try:
        spec = yaml.safe_load(dump_spec(source))
    except STCNNTError as err:
        if isinstance(err, SpecError) and not isinstance(err, ShapeError):
            raise err.located(path_prefix="model") from None
        raise
    spec["in_channels"] = channels
    if recipe.checkpoint:
        spec.setdefault("defaults", {})["checkpoint"] = True
    if recipe.heads is not None:
        spec["heads"] = {n: {"kind": h.kind, **_plain(h.keys())} for n, h in recipe.heads.items()}
        where = "heads"
    elif spec.get("heads") and _fits(spec["heads"], recipe.task):
        where = "model"
    else:
        spec["heads"] = {_default_name(recipe.task): _default_head(recipe.task, channels, classes)}
        where = "heads"
    kind = HEAD_OF_TASK[recipe.task]
    fitting = [n for n, h in spec["heads"].items() if h["kind"] == kind]
    if not fitting:
        kinds = ", ".join(f"{n} ({h['kind']})" for n, h in spec["heads"].items())
        raise SpecError(f"task {recipe.task} trains a {kind} head, and the heads are {kinds}; "
                        f"add a {kind} head or drop heads: to get one", where)  # fmt: skip
    head = fitting[0]
    if recipe.task == "segment" and classes and spec["heads"][head]["classes"] < classes:
        raise SpecError(f"heads.{head} has {spec['heads'][head]['classes']} classes but the "
                        f"data has labels 0..{classes - 1}", where)  # fmt: skip
    return spec, head, weights


def _plain(keys: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()}


def _fits(heads: dict[str, Any], task: str) -> bool:
    return any(h.get("kind") == HEAD_OF_TASK[task] for h in heads.values())


def _default_name(task: str) -> str:
    return {"segment": "seg", "classify": "label"}.get(task, "clean")


def _default_head(task: str, channels: int, classes: int | None) -> dict[str, Any]:
    if task in ("segment", "classify"):
        return {"kind": HEAD_OF_TASK[task], "classes": classes or 2}
    return {"kind": "enhancement", "out_channels": channels}


def check_patch(spec: dict, patch: tuple[int, int, int], channels: int) -> None:
    """The patch must be an input the architecture runs on (else: the nearest valid)."""
    t, h, w = patch
    try:
        check(spec, (1, t, channels, h, w))
    except ShapeError as err:
        raise ShapeError(
            f"the model cannot run on patches of [{t}, {h}, {w}] (T, H, W): {err.reason}",
            "data.patch", rule=err.rule, nearest=err.nearest,
        ) from None  # fmt: skip


def prepare_model(
    src: RecipeSource, channels: int, classes: int | None, patch: tuple[int, int, int]
) -> Prepared:
    """Build the recipe's model, load its starting weights and set what trains."""
    recipe = src.recipe
    spec, head, weights = spec_of(src, channels, classes)
    check_patch(spec, patch, channels)
    model = build(spec, seed=recipe.seed)
    if weights is not None:
        same_heads = yaml.safe_load(read_metadata(weights)["spec"]).get("heads") == spec["heads"]
        _load(model, weights, None if same_heads else "backbone", True, "model")
    if recipe.init is not None:
        init = recipe.init
        _load(model, src.resolve(init.path), init.part, init.strict, "init")
    adapt = recipe.adapt
    try:
        if adapt.freeze:
            freeze(model, *adapt.freeze)
    except STCNNTError as err:
        raise SpecError(str(err).removeprefix("freeze: "), "adapt.freeze") from None
    if adapt.method == "frozen":
        freeze(model, "backbone")
    elif adapt.method == "lora":
        model = _lora(model, adapt)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Prepared(model, head, spec, trainable, total)


def _load(model: nn.Module, path: Path, part: str | None, strict: bool, where: str) -> None:
    if not path.is_file():
        raise SpecError(f"weights file not found: {path}", where)
    try:
        load_weights(model, path, part=part, strict=strict)
    except STCNNTError as err:
        raise WeightsError(f"{where}: {path.name} cannot start this model: {err}") from None


def _lora(model: nn.Module, adapt: Any) -> nn.Module:
    try:
        import peft
    except ImportError:
        raise SpecError('adapt.method lora needs PEFT: pip install "stcnnt-dsl[train]"',
                        "adapt.method") from None  # fmt: skip
    try:
        targets = lora_targets(model, *(adapt.targets or ()))
    except STCNNTError as err:
        raise SpecError(str(err).removeprefix("lora_targets: "), "adapt.targets") from None
    config = peft.LoraConfig(r=adapt.rank, lora_alpha=adapt.alpha or 2 * adapt.rank,
                             target_modules=targets)  # fmt: skip
    adapted = apply_lora(model, config)
    for param in unwrap(adapted.get_base_model()).heads.parameters():
        param.requires_grad_(True)  # the heads are new: they train in full
    return adapted


def merged(model: nn.Module) -> nn.Module:
    """The plain model to save: LoRA adapters folded into a copy's weights."""
    model = unwrap(model)
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model
