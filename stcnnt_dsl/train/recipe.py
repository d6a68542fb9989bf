"""The training recipe: one YAML file that says what to train, on what, and how.

Validated like architecture specs (strict YAML, unknown keys with a did-you-mean, every
error located at file:line:column and recipe path) from pydantic models that also give
the JSON Schema for editors (`recipe_json_schema`). `--set key.path=value` overrides are
applied to the plain data before validation, so they are checked the same way.

    model: unet(channels=[8, 16], blocks=T1L1G1, window=4, patch=2)
    task: segment
    data: {path: Dataset001_Shapes, patch: [4, 32, 32], batch: 8, val: 0.2}
    steps: 300
    optimizer: {name: adamw, lr: 0.003, weight_decay: 0.01}
    schedule: {name: cosine, warmup: 20}

Relative paths (model and init files, data sets) are relative to the recipe's folder.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, WithJsonSchema
from pydantic import model_validator as _model_validator

from ..errors import SpecError, did_you_mean
from ..language.fields import _error, _Strict
from ..language.head_spec import HeadSpec
from ..language.options import Bool, Enum, Float, Int, OptionType, OptionValueError
from ..language.spec_errors import _from_validation_error
from ..language.yamlio import MAX_YAML_BYTES, Positions, dump_yaml, load_yaml

__all__ = [
    "AUGMENTS",
    "TASKS",
    "AdaptSpec",
    "DataSpec",
    "InitSpec",
    "LossSpec",
    "OptimizerSpec",
    "Recipe",
    "RecipeSource",
    "ScheduleSpec",
    "dump_recipe",
    "load_recipe",
    "recipe_json_schema",
]

TASKS = ("segment", "classify", "enhance", "pretrain")
OBJECTIVES = ("denoise", "masked")
HEAD_OF_TASK = {  # the head kind each task trains
    "segment": "segmentation",
    "classify": "classification",
    "enhance": "enhancement",
    "pretrain": "enhancement",
}


def _typed(kind: OptionType, description: str = "") -> Any:
    """A field checked by one of the option types (the same messages and schema)."""

    def check(value: Any) -> Any:
        try:
            return kind.check(value)
        except OptionValueError as err:
            raise _error(str(err)) from None

    schema = dict(kind.schema(), **({"description": description} if description else {}))
    return Annotated[Any, BeforeValidator(check), WithJsonSchema(schema)]


def _words(*choices: str, description: str = "") -> Any:
    return _typed(Enum(choices), description)


Count = _typed(Int())
Steps0 = _typed(Int(minimum=0))
Rate = _typed(Float(0.0, float("inf")))
Fraction = _typed(Float(0.0, 1.0))
Flag = _typed(Bool())


def _optional_count(value: Any) -> Any:
    return None if value is None else Int().check(value)


def _patch(value: Any) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3:
        raise _error(f"patch is [T, H, W] (three positive integers), got {value!r}")
    try:
        return tuple(Int().check(v) for v in value)  # type: ignore[return-value]
    except OptionValueError as err:
        raise _error(f"patch: {err}") from None


Patch = Annotated[
    Any,
    BeforeValidator(_patch),
    WithJsonSchema({"type": "array", "items": {"type": "integer", "minimum": 1},
                    "minItems": 3, "maxItems": 3,
                    "description": "patch size [T, H, W] the model trains on"}),
]  # fmt: skip


# --------------------------------------------------------------------------- augment


def _augment_table() -> dict[str, type]:
    """MONAI's random dictionary transforms by their array name (RandFlip ->
    RandFlipd), spatial ones marked: a closed table, never an import by name."""
    from monai.transforms.intensity import dictionary as intensity
    from monai.transforms.spatial import dictionary as spatial

    table = {}
    for module in (spatial, intensity):
        for name in module.__all__:
            if name.startswith("Rand") and name.endswith("d") and name != "RandGridPatchd":
                table[name[:-1]] = getattr(module, name)
    return table


class _Augments:
    """The table, read on first use (MONAI is imported only when a recipe augments)."""

    _table: dict[str, type] | None = None

    def __call__(self) -> dict[str, type]:
        if self._table is None:
            try:
                self._table = _augment_table()
            except ImportError:
                raise _error('augment needs MONAI: pip install "stcnnt-dsl[train]"') from None
        return self._table


AUGMENTS = _Augments()
SPATIAL_AUGMENTS_MODULE = "monai.transforms.spatial.dictionary"


def _augment(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """[{RandFlip: {spatial_axis: [1, 2], prob: 0.5}}, RandGaussianNoise, ...]: names of
    MONAI's random transforms with their arguments, checked against their signatures."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _error("augment is a list of MONAI transforms: [{RandFlip: {prob: 0.5}}, ...]")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, Mapping) or len(item) != 1:
            raise _error(f"each entry is one transform name with its arguments, got {item!r}",
                         f"[{i}]")  # fmt: skip
        ((name, args),) = item.items()
        table = AUGMENTS()
        if name not in table:
            raise _error(
                f"unknown transform {name!r}{did_you_mean(name, table)}; MONAI's random "
                f"transforms: {', '.join(sorted(table))}",
                f"[{i}]",
            )
        args = args or {}
        if not isinstance(args, Mapping):
            raise _error(f"{name}'s arguments are a mapping, got {args!r}", f"[{i}].{name}")
        known = [p for p in inspect.signature(table[name].__init__).parameters
                 if p not in ("self", "keys", "allow_missing_keys", "args", "kwargs")]  # fmt: skip
        for key in args:
            if key not in known:
                raise _error(
                    f"{name} has no argument {key!r}{did_you_mean(key, known)}; its "
                    f"arguments: {', '.join(known)}",
                    f"[{i}].{name}.{key}",
                )
        out.append((name, dict(args)))
    return out


Augment = Annotated[
    Any,
    BeforeValidator(_augment),
    WithJsonSchema({"type": "array", "items": {"oneOf": [
        {"type": "string", "pattern": "^Rand"},
        {"type": "object", "minProperties": 1, "maxProperties": 1},
    ]}, "description": "MONAI random transforms by name with their arguments, e.g. "
        "[{RandFlip: {spatial_axis: [1, 2], prob: 0.5}}, {RandGaussianNoise: {prob: 0.2}}]"}),
]  # fmt: skip


# --------------------------------------------------------------------------- sections

NORMALIZE = ("zscore", "percentile", "none")


class DataSetEntry(_Strict):
    """One data set of a mix: where, how often it is drawn, how it is normalised."""

    path: str = Field(description="a data set folder (nnU-Net, Decathlon, plain folder)")
    weight: Rate = Field(1.0, description="relative sampling weight in the mix")
    normalize: _words(*NORMALIZE) | None = Field(None, description="overrides data.normalize")


def _data_path(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        return [DataSetEntry(path=v) if isinstance(v, str) else v for v in value]
    raise _error("path is a data set folder or a list of them ({path, weight, normalize})")


class DataSpec(_Strict):
    """What to train on: the data set(s), the patch and batch, held-out cases, augments."""

    path: Annotated[str | list[DataSetEntry], BeforeValidator(_data_path)] = Field(
        description="a data set folder, or a list of them (each a folder or "
        "{path, weight, normalize}) mixed into one run"
    )
    patch: Patch
    batch: Count = Field(2, description="samples per step (over all processes)")
    val: Any = Field(
        0.2,
        description="held-out cases: a fraction (0.2), a count (4), or a list of case names",
    )
    cases: Annotated[Any, BeforeValidator(_optional_count)] = Field(
        None, description="train on the first N labelled training cases only"
    )
    augment: Augment = Field(default_factory=list)
    normalize: _words(*NORMALIZE) = Field(
        "zscore",
        description="intensity normalisation per case and channel: zscore, percentile "
        "(0.5-99.5 to [0, 1]) or none",
    )
    cache: Flag = Field(True, description="keep the normalised cases in memory")

    @_model_validator(mode="after")
    def _check_val(self) -> DataSpec:
        val = self.val
        ok = (
            (isinstance(val, float) and 0 < val < 1)
            or (isinstance(val, int) and not isinstance(val, bool) and val >= 0)
            or (isinstance(val, list) and all(isinstance(v, str) for v in val))
        )
        if not ok:
            raise _error(
                f"val is a fraction in (0, 1), a case count, or a list of case names; got {val!r}",
                "val",
            )
        return self


class OptimizerSpec(_Strict):
    name: _words("adamw", "adam", "sgd") = "adamw"
    lr: Rate = 1e-3
    weight_decay: Rate = 0.01
    momentum: Fraction = Field(0.9, description="sgd only")
    layer_decay: Annotated[Any, BeforeValidator(lambda v: Float(0.0, 1.0, False).check(v))] = Field(
        None, description="lr scale per stage, deepest first (fine-tuning)"
    )


class ScheduleSpec(_Strict):
    name: _words("cosine", "linear", "constant") = "cosine"
    warmup: Steps0 = Field(0, description="steps of linear warm-up from 0")
    min_lr: Rate = Field(0.0, description="the learning rate at the last step")


class AdaptSpec(_Strict):
    method: _words("full", "lora", "frozen") = Field(
        "full",
        description="full: train everything; lora: LoRA adapters on the backbone (PEFT), "
        "the heads trained; frozen: the backbone frozen, the heads trained",
    )
    rank: Count = 8
    alpha: Rate | None = Field(None, description="LoRA scale (default: 2 x rank)")
    targets: list[str] | None = Field(
        None, description="stage patterns to adapt (decoder.*, bridge); default: every stage"
    )
    freeze: list[str] = Field(default_factory=list, description="stage patterns to freeze")


class InitSpec(_Strict):
    path: str = Field(description="a .safetensors file (ours or a reference checkpoint)")
    part: str | None = Field(None, description="backbone, heads.NAME, or the whole model")
    strict: Flag = True


class LossSpec(_Strict):
    name: _words("dice_ce", "dice", "ce", "l1", "mse", "ssim") | None = Field(
        None,
        description="default by task: segment dice_ce, classify ce, enhance and pretrain l1",
    )
    class_weights: list[float] | None = None
    ignore_label: int | None = Field(None, description="a label value the loss ignores")
    noise: Rate = Field(0.3, description="pretrain denoise: std of the added Gaussian noise")
    mask_ratio: Fraction = Field(0.5, description="pretrain masked: fraction of patches hidden")
    mask_size: Count = Field(4, description="pretrain masked: hidden squares' size (pixels)")


class Recipe(_Strict):
    """A training run. Keys (DESIGN.md section 3): model, heads, task, data, steps,
    optimizer, schedule, adapt, init, precision, seed, eval_every, checkpoint_every,
    distributed; and objective, epochs, loss, checkpoint, tensorboard."""

    model: Any = Field(
        description="anything load_spec accepts (bundled name, file, expression, mapping), "
        "or a .safetensors model"
    )
    heads: dict[str, HeadSpec] | None = Field(
        None, description="task heads (default: one head that fits the task)"
    )
    task: _words(*TASKS)
    objective: _words(*OBJECTIVES) | None = Field(None, description="pretrain: denoise|masked")
    data: DataSpec
    steps: Annotated[Any, BeforeValidator(_optional_count)] = Field(
        None, description="optimizer steps"
    )
    epochs: Annotated[Any, BeforeValidator(_optional_count)] = Field(
        None, description="instead of steps: passes over the training cases' patches"
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    adapt: AdaptSpec = Field(default_factory=AdaptSpec)
    init: Annotated[Any, BeforeValidator(lambda v: {"path": v} if isinstance(v, str) else v)] = (
        Field(None, description="weights to start from: a path or {path, part, strict}")
    )
    loss: LossSpec = Field(default_factory=LossSpec)
    precision: _words("fp32", "bf16", "fp16") = Field(
        "fp32", description="bf16/fp16 autocast on GPU (bf16 also on CPU)"
    )
    seed: Steps0 = 0
    eval_every: Steps0 = Field(0, description="validate every N steps (0: at the end only)")
    checkpoint_every: Steps0 = Field(0, description="checkpoint every N steps (0: at the end)")
    distributed: _words("ddp", "fsdp") = Field(
        "ddp", description="the wrapper under torchrun: DDP or FSDP2 per stage"
    )
    checkpoint: Flag = Field(False, description="activation recompute in every block")
    tensorboard: Flag = Field(False, description="also write TensorBoard logs in DIR/tb")

    @_model_validator(mode="after")
    def _coherent(self) -> Recipe:
        if (self.steps is None) == (self.epochs is None):
            raise _error("give steps or epochs (one of them)", "steps")
        if self.task == "pretrain" and self.objective is None:
            raise _error("task pretrain needs an objective: denoise or masked", "objective")
        if self.task != "pretrain" and self.objective is not None:
            raise _error(f"objective is for task pretrain (this task is {self.task})",
                         "objective")  # fmt: skip
        if self.init is not None and not isinstance(self.init, InitSpec):
            object.__setattr__(self, "init", InitSpec.model_validate(self.init))
        return self

    @classmethod
    def _where_instead(cls, key: Any) -> str:
        where = {"patch": "data", "batch": "data", "augment": "data", "val": "data",
                 "lr": "optimizer", "weight_decay": "optimizer", "warmup": "schedule",
                 "rank": "adapt", "targets": "adapt", "freeze": "adapt", "method": "adapt",
                 "class_weights": "loss", "ignore_label": "loss"}  # fmt: skip
        return f" ({key} goes under {where[key]}:)" if key in where else ""


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RecipeSource:
    """A validated recipe, the folder its relative paths start from, and its file."""

    recipe: Recipe
    base: Path
    file: str | None = None

    def resolve(self, path: str) -> Path:
        """A path of the recipe, relative to its folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base / p


def _parse_value(text: str, where: str) -> Any:
    value, _ = load_yaml(text, file=where)
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`key.path=value` pairs (values in YAML: 3e-4, [4, 32, 32], {name: sgd}) set in
    the recipe's data; mappings along the path are created."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: write KEY=VALUE, e.g. --set optimizer.lr=3e-4")
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(
                    f"--set {item}: {'.'.join(parts[: i + 1])} is not a mapping "
                    f"(it is {child!r})", ".".join(parts[: i + 1]),
                )  # fmt: skip
            node = child
        node[parts[-1]] = _parse_value(text, f"--set {key}")
    return data


def _read(path: Path) -> str:
    if not path.is_file():
        raise SpecError(
            f"recipe not found: {path}" if not path.is_dir() else f"{path} is a folder; "
            "give the recipe's .yaml file", file=str(path),
        )  # fmt: skip
    if path.stat().st_size > MAX_YAML_BYTES:
        raise SpecError(f"the recipe is larger than {MAX_YAML_BYTES // 1000} kB", file=str(path))
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read the recipe: {err}", file=str(path)) from None


def load_recipe(
    source: Any, *, overrides: Sequence[str] = (), base: str | Path | None = None
) -> RecipeSource:
    """A validated recipe from a .yaml path, YAML text, a mapping or a `Recipe`, with
    `--set` style `overrides` applied first. Every mistake is one `SpecError` naming the
    recipe path (and file:line:column when it came from a file)."""
    if isinstance(source, RecipeSource) and not overrides:
        return source
    if isinstance(source, RecipeSource):
        source = source.recipe
    file = None
    positions = Positions()
    text = None
    if isinstance(source, Recipe):
        data: Any = dump_plain(source)
        base = base or Path.cwd()
    elif isinstance(source, Mapping):
        data = _deep_copy(source)
        base = base or Path.cwd()
    elif (
        isinstance(source, (str, Path))
        and "\n" not in str(source)
        and ":" not in str(source).split("/")[-1]
    ):
        path = Path(source)
        text = _read(path)
        file = str(path)
        data, positions = load_yaml(text, file=file)
        base = base or path.resolve().parent
    elif isinstance(source, str):
        text = source
        data, positions = load_yaml(text, file="<recipe>")
        file = "<recipe>"
        base = base or Path.cwd()
    else:
        raise SpecError(f"a recipe is a .yaml path, YAML text or a mapping, got "
                        f"{type(source).__name__}")  # fmt: skip
    if data is None:
        raise SpecError("the recipe is empty; it needs at least model, task, data and steps",
                        file=file)  # fmt: skip
    if not isinstance(data, dict):
        raise SpecError(f"a recipe is a mapping of keys, got {type(data).__name__}", file=file)
    set_paths = [o.partition("=")[0].strip() for o in overrides]
    data = apply_overrides(data, overrides)
    for key in list(positions):  # overridden values have no place in the file
        if any(_within(key, p) for p in set_paths):
            del positions[key]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        error = _from_validation_error(err, positions, text, file)
        if isinstance(error, SpecError):
            hit = next((p for p in set_paths if _within(error.path, p)), None)
            if hit is not None:  # the value came from the command line, not the file
                error.file = error.line = error.column = None
                error.reason += f" (set by --set {hit}=...)"
                error.args = (str(error),)
        raise error from None
    return RecipeSource(recipe, Path(base), file)


def _within(path: str, prefix: str) -> bool:
    return (
        path == prefix
        or path.startswith((prefix + ".", prefix + "["))
        or prefix.startswith(path + ".")
    )


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


def dump_plain(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (every value, defaults included: a resolved recipe)."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["data"]["augment"] = [{n: a} for n, a in recipe.data.augment]
    if recipe.heads:
        data["heads"] = {k: h.keys() | {"kind": h.kind} for k, h in recipe.heads.items()}
        data["heads"] = {k: {"kind": v.pop("kind"), **v} for k, v in data["heads"].items()}
        for head in data["heads"].values():
            for key, value in head.items():
                if isinstance(value, tuple):
                    head[key] = list(value)
    return data


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (DIR/recipe.yaml)."""
    return dump_yaml(dump_plain(recipe))


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe format (for editors: `stcnnt train --schema`)."""
    import warnings

    from pydantic.json_schema import PydanticJsonSchemaWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
        schema = Recipe.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "stcnnt-dsl training recipe"
    return schema
