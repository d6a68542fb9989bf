"""Saving and loading compiled backbones as safetensors files.

A file holds the model's state dict (parameters and buffers) and, in its metadata, the
spec as canonical YAML (`dump_spec`), the library version and a format version. Loading
rebuilds the module from that spec alone and checks every tensor name and shape against
it: no pickle, no code from the file is ever run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import STCNNTError, WeightsError

__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "read_metadata", "save_model"]

FORMAT = "stcnnt-dsl"
FORMAT_VERSION = "1"


def _version() -> str:
    from . import __version__

    return __version__


def save_model(
    model: nn.Module, path: str | Path, *, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write `model` (a `Backbone`) to a `.safetensors` file with its spec in the
    metadata; `load_model(path)` rebuilds it."""
    from safetensors.torch import save_file

    from .backbones import Backbone
    from .spec import dump_spec

    if not isinstance(model, Backbone):
        raise WeightsError(
            f"save_model needs a model built by stcnnt_dsl.build (a Backbone), got "
            f"{type(model).__name__}: only then can the file carry the spec that rebuilds it"
        )
    path = Path(path)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensors[name] = tensor.detach().to("cpu").contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stcnnt_dsl_version": _version(),
        "torch_version": torch.__version__,
        "spec": dump_spec(model.spec),
        "name": model.spec.name,
        "parameters": str(sum(p.numel() for p in model.parameters())),
    }
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise WeightsError(f"extra metadata key {key!r} is reserved")
        metadata[key] = str(value)
    if path.parent and not path.parent.exists():
        raise WeightsError(f"cannot write {path}: the folder {path.parent} does not exist")
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError as err:
        raise WeightsError(f"cannot write {path}: {err.strerror or err}") from None
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a file written by `save_model` (checked to be one)."""
    from safetensors import safe_open

    from .spec import _is_file

    path = Path(path)
    if not _is_file(path):
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
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"{path} uses file format version {version!r}; this stcnnt-dsl "
            f"({_version()}) reads version {FORMAT_VERSION}"
        )
    return dict(metadata)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Rebuild the `Backbone` saved in `path` by `save_model` / `stcnnt build --out`.

    The spec comes from the file's metadata; every tensor must match the rebuilt model
    by name and shape (a `WeightsError` names the first mismatches otherwise). The
    model comes back in eval mode, in the saved floating dtype unless `dtype` is given.
    """
    from safetensors.torch import load_file

    from .compiler import build
    from .spec import _load_text

    metadata = read_metadata(path)
    try:
        # Always as text: a path or a bundled name in a file's metadata must not make
        # the loader read other files.
        spec = _load_text(metadata["spec"], "<metadata spec>")
    except STCNNTError as err:
        raise WeightsError(f"{path}: the spec in the file's metadata is not valid: {err}") from None
    tensors = load_file(str(path))
    model = build(spec)
    _check_tensors(model, tensors, path)
    saved = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if dtype is None and len(saved) == 1:
        dtype = saved.pop()
    if dtype is not None:
        model = model.to(dtype=dtype)
    model.load_state_dict(tensors, strict=True)
    if device is not None:
        model = model.to(device=device)
    return model.eval()


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
