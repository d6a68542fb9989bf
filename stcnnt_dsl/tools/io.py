"""Saving and loading compiled models as safetensors files.

A file holds the model's state dict (parameters and buffers) and, in its metadata, the
spec as canonical YAML (`dump_spec`), the library version and a format version. Loading
rebuilds the module from that spec alone and checks every tensor name, shape and kind
against it: no pickle, no code from the file is ever run.

Writes are atomic: the file is written next to its target under a temporary name and
renamed into place, so a crash or a full disk never destroys the previous checkpoint.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__
from ..errors import STCNNTError, WeightsError
from ..language.spec import dump_spec, load_source
from ..models.build import build

__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "read_metadata", "save_model", "write_atomic"]

FORMAT = "stcnnt-dsl"
FORMAT_VERSION = "2"
# Format 1 (stcnnt-dsl 0.1) named HR-Net modules differently; its files load through
# this renaming (old key prefix -> new), applied in order.
_V1_RENAMES = (
    (re.compile(r"^blocks\.level(\d+)_stage(\d+)\."), r"level\1.stage\2."),
    (re.compile(r"^outputs\.(\d+)\."), r"level\1.output."),
    (re.compile(r"^transitions\.stage(\d+)_(\d+)to(\d+)\."), r"exchange.stage\1.\2to\3."),
    (re.compile(r"^output_up\.(\d+)\."), lambda m: f"upsample.{int(m[1]) + 1}."),
)
_SUFFIXES = (".safetensors",)


def unwrap(model: Any) -> Any:
    """The model inside a `torch.compile` wrapper (or a DDP / DataParallel one)."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module) and hasattr(inner, "spec"):
            return unwrap(inner)
    return model


def refuse_adapted(model: nn.Module, action: str, fix: str) -> None:
    """A `WeightsError` for a model carrying PEFT adapters (their layers rename the
    weights: `...qkv.base_layer.weight`, `...qkv.lora_A.default.weight`), which no file
    of ours matches; `fix` says what to do instead."""
    if getattr(model, "peft_config", None) is not None or any(
        hasattr(m, "lora_A") and hasattr(m, "base_layer") for m in model.modules()
    ):
        raise WeightsError(f"{action}: this model carries LoRA adapters (PEFT); {fix}")


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise WeightsError(
            f"cannot write {path}: it is a folder; give a file name ending in .safetensors"
        )
    if path.suffix.lower() not in _SUFFIXES:
        raise WeightsError(
            f"cannot write {path}: weights are saved as safetensors, so the file name must end "
            f"in .safetensors (a {path.suffix or 'suffix-less'} name would hide the format)"
        )
    if not path.parent.exists():
        raise WeightsError(f"cannot write {path}: the folder {path.parent} does not exist")


def write_atomic(path: Path, write: Any) -> None:
    """Call `write(temporary_path)`, then rename the file onto `path` (same folder, so
    the rename is atomic); the temporary file is removed on any failure."""
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise WeightsError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save_model(
    model: nn.Module, path: str | Path, *, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write `model` (built by `stcnnt_dsl.build`; a `torch.compile`d or DDP-wrapped one
    is unwrapped) to a `.safetensors` file with its spec in the metadata;
    `load_model(path)` rebuilds it. The write is atomic."""
    model = unwrap(model)
    spec = getattr(model, "spec", None)
    if isinstance(model, nn.Module):
        refuse_adapted(
            model, "save_model",
            "fold them into the weights first, model = model.merge_and_unload(), then save "
            "(or keep the adapters alone with model.save_pretrained(folder))",
        )  # fmt: skip
    if not isinstance(model, nn.Module) or spec is None or not hasattr(model, "graph"):
        raise WeightsError(
            f"save_model needs a model built by stcnnt_dsl.build, got {type(model).__name__}: "
            "only then can the file carry the spec that rebuilds it"
        )
    path = Path(path)
    _check_target(path)
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.numel() and tensor.data_ptr() in seen:  # a shared module (upernet's
            tensor = tensor.clone()  # shared_smooth): one copy per name, as its state dict
        seen.add(tensor.data_ptr())
        tensors[name] = tensor
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stcnnt_dsl_version": __version__,
        "torch_version": torch.__version__,
        "spec": dump_spec(spec),
        "name": spec.name,
        "parameters": str(sum(p.numel() for p in model.parameters())),
        "layout": getattr(model, "layout", "BTCHW"),
    }
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise WeightsError(f"extra metadata key {key!r} is reserved")
        metadata[key] = str(value)
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a file written by `save_model` (checked to be one)."""
    path = Path(path)
    if not _is_file(path):
        if path.is_dir():
            raise WeightsError(
                f"{path} is a folder; give the .safetensors file written by save_model"
            )
        raise WeightsError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise WeightsError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err})"
            + _pickle_hint(path)
        ) from None
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise WeightsError(
            f"{path} was not written by stcnnt-dsl (its metadata has no stcnnt-dsl spec); "
            "load plain state dicts with model.load_state_dict(safetensors.torch.load_file(...))"
        )
    version = metadata.get("format_version", "")
    if version not in ("1", FORMAT_VERSION):
        raise WeightsError(
            f"{path} uses file format version {version!r}; this stcnnt-dsl "
            f"({__version__}) reads versions 1 and {FORMAT_VERSION}"
        )
    return dict(metadata)


def _migrate(tensors: dict[str, torch.Tensor], version: str) -> dict[str, torch.Tensor]:
    if version != "1":
        return tensors
    out = {}
    for name, tensor in tensors.items():
        for pattern, new in _V1_RENAMES:
            name = pattern.sub(new, name)
        out[name] = tensor
    return out


def load_model(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Rebuild the model saved in `path` by `save_model` / `stcnnt build --out`.

    The spec comes from the file's metadata; every tensor must match the rebuilt model
    by name, shape and kind (a `WeightsError` names the first mismatches otherwise). The
    model comes back in eval mode with each tensor in its saved dtype (mixed dtypes,
    e.g. bf16 weights with fp32 norms, stay mixed) unless `dtype` is given.
    """
    metadata = read_metadata(path)
    try:
        # Always as text: a path or a bundled name in a file's metadata must not make
        # the loader read other files.
        spec = load_source(metadata["spec"], read_files=False)
    except STCNNTError as err:
        raise WeightsError(f"{path}: the spec in the file's metadata is not valid: {err}") from None
    tensors = _migrate(load_file(str(path)), metadata.get("format_version", ""))
    model = build(spec, layout=metadata.get("layout", "BTCHW"))
    _check_tensors(model, tensors, path)
    if dtype is not None:
        model = model.to(dtype=dtype)
        tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    else:  # every tensor keeps the dtype it was saved in
        _match_dtypes(model, tensors)
    model.load_state_dict(tensors, strict=True)
    if device is not None:
        model = model.to(device=device)
    return model.eval()


def _match_dtypes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give each parameter and buffer the dtype of its saved tensor."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        saved = tensors.get(name)
        if saved is not None and saved.is_floating_point() and saved.dtype != tensor.dtype:
            tensor.data = tensor.data.to(saved.dtype)


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: Any) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    problems = []
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    wrong = [n for n in expected if n in found and expected[n] != found[n]]
    if missing:
        problems.append(f"missing tensors: {_few(missing)}")
    if unexpected:
        problems.append(f"tensors the spec has no place for: {_few(unexpected)}")
    if wrong:
        problems.append(
            "shape mismatches: "
            + _few([f"{n} is {list(found[n])} in the file, {list(expected[n])} in the model"
                    for n in wrong])
        )  # fmt: skip
    state = model.state_dict()
    kinds = [  # a float parameter stored as integers (or the reverse) is not these weights
        n for n in expected
        if n in found and state[n].is_floating_point() != tensors[n].is_floating_point()
    ]  # fmt: skip
    if kinds:
        problems.append(
            "dtype mismatches: "
            + _few([f"{n} is {tensors[n].dtype} in the file, {state[n].dtype} in the model"
                    for n in kinds])
        )  # fmt: skip
    if problems:
        raise WeightsError(
            f"{path}: the weights do not match the spec stored with them; " + "; ".join(problems)
        )


def _pickle_hint(path: Path) -> str:
    """Say so when the file is a PyTorch checkpoint (a zip archive or a pickle)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        return ""
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return (
            "; it looks like a torch.save / pickle checkpoint, which is never unpickled "
            "here: convert it to safetensors where you trust its origin"
        )
    return ""


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
