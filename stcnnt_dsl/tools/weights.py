"""`load_weights`: trained weights into a model, or into one part of it.

The file is ours (written by `save_model`: a backbone's or a whole model's) or the
reference implementation's (a backbone or whole-model checkpoint, mapped by
`stcnnt_dsl.compat`). `part` picks what to fill: the whole model, its `backbone`, or one
head (`heads.NAME`), so a backbone trained on one task can start another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from ..compat.weights import _reference_names, _strip_prefix, read_reference, reference_tensor
from ..errors import WeightsError
from ..models.model import Model
from .io import FORMAT, _migrate, refuse_adapted, unwrap

__all__ = ["LoadReport", "load_weights"]


@dataclass
class LoadReport:
    """What `load_weights` did: the keys it loaded, and with `strict=False` the keys of
    the part that the file did not have (`missing`) and the file's keys that had no place
    (`unexpected`)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        """A summary: the counts, and the first few keys of each list."""

        def some(keys: list[str]) -> str:
            shown = ", ".join(keys[:3])
            return f"{shown}, ... ({len(keys) - 3} more)" if len(keys) > 3 else shown

        lines = [f"loaded {len(self.loaded)} tensors"]
        for what, keys in (("missing from the file", self.missing),
                           ("in the file without a place", self.unexpected)):  # fmt: skip
            if keys:
                lines.append(f"{what}: {len(keys)} ({some(keys)})")
        return "; ".join(lines)


def _part(model: nn.Module, part: str | None) -> tuple[nn.Module, str]:
    """(the module to fill, its prefix in a whole model's state dict)."""
    if part is None:
        return model, ""
    if part == "backbone":
        return (model.backbone, "backbone.") if isinstance(model, Model) else (model, "")
    if part.startswith("heads.") and isinstance(model, Model):
        name = part.removeprefix("heads.")
        if name in model.heads:
            return model.heads[name], f"heads.{name}."
        raise WeightsError(f"part={part!r}: this model has no head {name!r}; heads: "
                           + ", ".join(f"heads.{n}" for n in model.heads))  # fmt: skip
    what = "'backbone' or 'heads.NAME'" if isinstance(model, Model) else "'backbone'"
    raise WeightsError(f"part={part!r}: the parts of this model are {what} (or None: all)")


def _ours(path: Path) -> dict[str, Tensor] | None:
    """The tensors of a file written by `save_model`, in this version's names; None for
    another kind of file."""
    if path.suffix.lower() != ".safetensors":
        raise WeightsError(
            f"{path.name}: load_weights reads .safetensors files (written by save_model, "
            "or a reference checkpoint); an ONNX file or a pickled .pt/.pth checkpoint "
            "holds no weights it can load"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors' own error types
        raise WeightsError(f"{path.name} is not a readable safetensors file: {err}") from None
    if metadata.get("format") != FORMAT:
        return None
    return _migrate(load_file(str(path)), metadata.get("format_version", ""))


def _from_reference(path: Path, model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """A reference checkpoint's tensors under our names for `model` (whole or backbone),
    and the checkpoint's keys that have no place in it (e.g. a head this model lacks)."""
    weights, _ = read_reference(path)
    names, optional = _reference_names(model)
    first = next(iter(names.values()))[0]
    if first not in weights and isinstance(model, Model):
        # a backbone checkpoint given to a whole model: map the backbone only
        names, optional = _reference_names(model.backbone)
        names = {f"backbone.{k}": v for k, v in names.items()}
        first = next(iter(names.values()))[0]
    if first not in weights and "backbone." + first in weights:
        weights = dict(weights)  # a whole model's checkpoint given to a backbone
        first = "backbone." + first
        names = {k: ["backbone." + r for r in refs] for k, refs in names.items()}
        optional = {"backbone." + k: v for k, v in optional.items()}
    weights = _strip_prefix(weights, first) if first not in weights else dict(weights)
    out = {}
    for key, refs in names.items():
        if all(r in weights for r in refs):
            parts = [reference_tensor(weights, r) for r in refs]
            out[key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    used = {r for refs in names.values() for r in refs}
    unplaced = sorted(k for k in weights if k not in used and k not in optional)
    return out, unplaced


def _outside(key: str, part: str | None) -> bool:
    """Whether a reference key lies outside `part` (its heads are `post.*`)."""
    if part is None:
        return False
    head = key.startswith(("post.", "pre."))
    return head if part == "backbone" else not head


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    part: str | None = None,
    strict: bool = True,
) -> LoadReport:
    """Load the weights in `path` into `model` (built by `stcnnt_dsl.build`), or into
    one `part` of it: "backbone" or "heads.NAME". The file is one written by `save_model`
    (a backbone's or a whole model's: a backbone file fills a model's backbone) or a
    reference checkpoint (see `stcnnt_dsl.compat`).

    With `strict` (the default) every tensor of the part must be in the file, with its
    shape, and the file's tensors for that part must all have a place; a mismatch is a
    `WeightsError` naming the key. `strict=False` loads what matches by name and shape,
    and says in the returned `LoadReport` what it left out (a shape mismatch is an error
    either way: those are not the same weights).
    """
    model = unwrap(model)
    refuse_adapted(
        model, "load_weights",
        "load the weights before apply_lora (or into model.merge_and_unload())",
    )  # fmt: skip
    if not hasattr(model, "graph"):
        raise WeightsError(
            f"load_weights needs a model built by stcnnt_dsl.build, got {type(model).__name__}"
        )
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"weights file not found: {file}")
    target, prefix = _part(model, part)
    unplaced: list[str] = []
    tensors = _ours(file)
    if tensors is None:
        tensors, unplaced = _from_reference(file, model)
        unplaced = [k for k in unplaced if not _outside(k, part)]
    elif isinstance(model, Model) and not any(
        k.startswith(("backbone.", "heads.")) for k in tensors
    ):
        tensors = {f"backbone.{k}": v for k, v in tensors.items()}  # a backbone's file
    if not isinstance(model, Model) and any(k.startswith("backbone.") for k in tensors):
        # a whole model's file given to a backbone: its backbone part is the model's
        heads = sorted(k for k in tensors if not k.startswith("backbone."))
        if heads and part is None and strict:
            raise WeightsError(
                f"{file.name} holds a whole model (backbone and {heads[0].split('.')[0]}: "
                f"{heads[0]}, ...) and this model is a backbone: load its backbone with "
                "part='backbone'"
            )
        unplaced += [] if part == "backbone" else heads
        tensors = {k.removeprefix("backbone."): v for k, v in tensors.items() if k not in heads}
    wanted = target.state_dict()
    found = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not found:
        have = sorted({k.split(".")[0] for k in tensors}) or ["none"]
        raise WeightsError(
            f"{file.name} has no weights for {part or 'the model'} (its parts: "
            f"{', '.join(have)}); pick another part or file"
        )
    report = LoadReport(unexpected=list(unplaced))
    for key, tensor in found.items():
        if key not in wanted:
            report.unexpected.append(prefix + key)
        elif tuple(tensor.shape) != tuple(wanted[key].shape):
            raise WeightsError(
                f"{prefix}{key} is {list(tensor.shape)} in {file.name} but "
                f"{list(wanted[key].shape)} in the model: not weights of this architecture"
            )
    report.missing = [prefix + k for k in wanted if k not in found]
    if strict and (report.missing or report.unexpected):
        problem = (
            f"the model's {report.missing[0]!r} is not in the file"
            if report.missing
            else f"the file's {report.unexpected[0]!r} has no place in the model"
        )
        count = len(report.missing) + len(report.unexpected)
        more = f" ({count - 1} more mismatch{'es' * (count > 2)})" if count > 1 else ""
        raise WeightsError(
            f"{file.name} does not match {part or 'the model'}: {problem}{more}; use "
            "strict=False to load what matches"
        )
    state = {k: v for k, v in found.items() if k in wanted}
    if not state:
        raise WeightsError(
            f"{file.name} has no tensor that fits {part or 'the model'} (none of its "
            f"{len(found)} names is one of the model's, e.g. {next(iter(found))!r} against "
            f"{next(iter(wanted))!r}): the weights of another architecture?"
        )
    with torch.no_grad():
        for key, value in state.items():
            wanted[key].copy_(value.to(wanted[key].dtype))
    report.loaded = [prefix + k for k in state]
    return report
