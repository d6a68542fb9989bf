"""The training loop of a recipe, on one process or many (torchrun: DDP or FSDP2).

`train(recipe, out=None, resume=False)` opens the data, builds the model, and runs the
steps: a global batch of `data.batch` samples per step, split evenly over the processes
(each takes its slice, so N processes reach the weights one process reaches on the whole
batch), AdamW or SGD with warm-up and cosine decay computed from the step, validation
every `eval_every` steps, a checkpoint every `checkpoint_every` steps (see `state`).
Rank 0 writes; every rank reads the same checkpoint on `--resume`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import SpecError, TrainError
from ..nn.layout import weights_in_layout
from ..tools.adapt import _built, param_groups
from ..tools.io import unwrap
from .data import Batch, TrainData, crop, open_sources
from .losses import make_loss
from .model import Prepared, merged, prepare_model
from .recipe import RecipeSource, dump_plain, dump_recipe, load_recipe
from .state import Checkpoint, clear, read_metrics, write_metrics, write_text

__all__ = ["TrainResult", "train"]

METRIC = {"segment": "dice", "classify": "accuracy", "enhance": "psnr", "pretrain": "psnr"}
# Keys a resumed run may change (how long and how often, not what is trained).
RESUMABLE_CHANGES = ("steps", "epochs", "eval_every", "checkpoint_every", "tensorboard")


@dataclass
class TrainResult:
    """What a run did: its folder, steps, the last and best validation, parameters."""

    out: str
    steps: int
    metric: str
    last: float | None
    best: float | None
    best_step: int | None
    loss: float | None
    trainable: int
    parameters: int
    seconds: float
    resumed_from: int | None = None
    world: int = 1
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("history")
        return out


# --------------------------------------------------------------------------- processes


class _Processes:
    """The process group torchrun describes (RANK, WORLD_SIZE, ...), joined on entry
    when there is one and this run started it; one process otherwise."""

    def __init__(self) -> None:
        self.started = False

    def __enter__(self) -> _Processes:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            if torch.cuda.is_available():
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(device)
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
            self.started = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            dist.destroy_process_group()

    @property
    def on(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.on else 0

    @property
    def world(self) -> int:
        return dist.get_world_size() if self.on else 1

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")


# --------------------------------------------------------------------------- the run


def _out_folder(src: RecipeSource, out: str | os.PathLike | None) -> Path:
    if out is not None:
        return Path(out)
    stem = Path(src.file).stem if src.file and not src.file.startswith("<") else "run"
    return Path("runs") / stem


def _check_folder(
    folder: Path, resume: bool, overwrite: bool, recipe_text: str, writer: bool
) -> None:
    """Refuse a folder holding another run unless resuming it or overwriting it."""
    if folder.exists() and not folder.is_dir():
        raise TrainError(f"--out {folder} is a file; give a folder")
    ours = [n for n in ("recipe.yaml", "last.safetensors", "metrics.csv", "state")
            if (folder / n).exists()]  # fmt: skip
    if resume:
        if not (folder / "last.safetensors").is_file():
            raise TrainError(f"--resume: {folder} has no checkpoint (last.safetensors) to "
                             "resume; run without --resume to start")  # fmt: skip
        _same_recipe(folder / "recipe.yaml", recipe_text)
        return
    if ours and not overwrite:
        raise TrainError(
            f"{folder} holds another run ({', '.join(ours)}); continue it with --resume, "
            "start afresh with --overwrite, or choose another --out"
        )
    if ours and writer:
        clear(folder)


def _same_recipe(path: Path, text: str) -> None:
    import yaml

    if not path.is_file():
        return
    before = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    now = yaml.safe_load(text)
    for key in sorted(set(before) | set(now)):
        if key not in RESUMABLE_CHANGES and before.get(key) != now.get(key):
            raise TrainError(
                f"--resume: the recipe's {key} differs from the run's ({path}): "
                f"{before.get(key)!r} then, {now.get(key)!r} now; only "
                f"{', '.join(RESUMABLE_CHANGES)} may change, or start afresh with --overwrite"
            )


def _task_fits_data(task: str, data: TrainData) -> tuple[int, int | None]:
    """(channels, classes) of the data, checked against the task."""
    kinds = {getattr(s.dataset, "task", None) for s in data.sources}
    if task == "segment" and kinds - {"segment"}:
        raise SpecError(f"task segment needs segmentation labels; the data set is "
                        f"{'/'.join(sorted(map(str, kinds)))}", "task")  # fmt: skip
    if task == "classify" and kinds - {"classify"}:
        raise SpecError(f"task classify needs class labels; the data set is "
                        f"{'/'.join(sorted(map(str, kinds)))}", "task")  # fmt: skip
    channels = {len(s.dataset.channels) for s in data.sources}
    if len(channels) > 1:
        raise SpecError(f"the data sets mixed in data.path have different channel counts "
                        f"({sorted(channels)}); one backbone takes one", "data.path")  # fmt: skip
    classes = None
    if task in ("segment", "classify"):
        classes = max(max(int(k) for k in s.dataset.classes) + 1 for s in data.sources)
    return channels.pop(), classes


def _schedule(recipe: Any, step: int, total: int) -> float:
    """The learning-rate factor at `step` (0-based): linear warm-up, then cosine or
    linear decay to min_lr, or constant."""
    sched, lr = recipe.schedule, recipe.optimizer.lr
    if step < sched.warmup:
        return (step + 1) / sched.warmup
    if sched.name == "constant":
        return 1.0
    progress = (step - sched.warmup) / max(total - sched.warmup - 1, 1)
    floor = sched.min_lr / lr if lr > 0 else 0.0
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if sched.name == "cosine" else 1 - progress
    return floor + (1 - floor) * shape


def _optimizer(recipe: Any, model: nn.Module) -> torch.optim.Optimizer:
    spec = recipe.optimizer
    groups = param_groups(model, lr=spec.lr, weight_decay=spec.weight_decay,
                          layer_decay=spec.layer_decay)  # fmt: skip
    for group in groups:
        group.pop("names")
        group["initial_lr"] = group["lr"]
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
    cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=spec.lr)


def _wrap(model: nn.Module, recipe: Any, procs: _Processes, heads: int) -> nn.Module:
    if not procs.on:
        return model
    if recipe.distributed == "ddp":
        ids = [procs.device.index] if procs.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=heads > 1
        )
    if recipe.adapt.method == "lora":
        raise SpecError("adapt.method lora trains a few adapter weights: run it with "
                        "distributed: ddp (FSDP2 shards large full models)",
                        "distributed")  # fmt: skip
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(procs.device.type, (procs.world,))
    inner = _built(model)
    for node in inner.graph.nodes:
        if node.has_module:
            fully_shard(inner.backbone.get_submodule(node.name), mesh=mesh)
    for head in inner.heads.values():
        fully_shard(head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class _Progress:
    """A bar on stderr (step, loss, rate, time left) when a person watches it; one line
    per evaluation either way (unless quiet)."""

    def __init__(self, total: int, start: int, quiet: bool, rank: int) -> None:
        self.quiet = quiet or rank != 0
        self.bar = None
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", file=sys.stderr,
                            dynamic_ncols=True, desc="train")  # fmt: skip

    def step(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e}", refresh=False)
            self.bar.update(1)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Run:
    """One training run (see the module docstring); `fit()` does it."""

    def __init__(self, src: RecipeSource, folder: Path, resume: bool, quiet: bool,
                 procs: _Processes) -> None:  # fmt: skip
        self.src, self.recipe, self.folder, self.procs = src, src.recipe, folder, procs
        self.resume = resume
        recipe = self.recipe
        torch.manual_seed(recipe.seed)
        self.data = TrainData(open_sources(src), recipe.data, recipe.task, recipe.seed,
                              recipe.objective, recipe.loss)  # fmt: skip
        self.channels, self.classes = _task_fits_data(recipe.task, self.data)
        if recipe.data.batch % procs.world:
            raise SpecError(f"data.batch {recipe.data.batch} does not split evenly over "
                            f"{procs.world} processes", "data.batch")  # fmt: skip
        self.prepared: Prepared = prepare_model(src, self.channels, self.classes,
                                                tuple(recipe.data.patch))  # fmt: skip
        self.loss_fn = make_loss(recipe.task, recipe.loss, self.classes)
        if recipe.epochs is not None:
            per_epoch = math.ceil(self.data.train_cases() / recipe.data.batch)
            self.total = recipe.epochs * per_epoch
        else:
            self.total = recipe.steps
        device = procs.device
        self.model = self.prepared.model.to(device)
        if not (procs.on and recipe.distributed == "fsdp"):  # FSDP2: contiguous only
            weights_in_layout(self.model, device)
        self.wrapped = _wrap(self.model, recipe, procs, len(self.prepared.spec["heads"]))
        self.optimizer = _optimizer(recipe, self.model)
        self.checkpoint = Checkpoint(folder)
        self.metric = METRIC[recipe.task]
        self.best: float | None = None
        self.best_step: int | None = None
        self.rows: list[dict[str, float]] = []
        self.evaluated = self.saved = 0  # the last steps evaluated and saved
        self.progress_quiet = quiet
        self.writer = None
        local = recipe.data.batch // procs.world
        self.indices = range(procs.rank * local, (procs.rank + 1) * local)
        self.autocast = self._autocast(recipe.precision, device)

    @staticmethod
    def _autocast(precision: str, device: torch.device) -> Any:
        if precision == "fp32":
            return nullcontext
        if precision == "fp16" and device.type != "cuda":
            raise SpecError("precision fp16 needs a GPU (autocast on CPU: use bf16)",
                            "precision")  # fmt: skip
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return lambda: torch.autocast(device.type, dtype=dtype)

    # ------------------------------------------------------------------ state

    def _state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        full = self.procs.on and self.recipe.distributed == "fsdp"
        options = StateDictOptions(full_state_dict=full, cpu_offload=full)
        return get_state_dict(self.wrapped, self.optimizer, options=options)

    def _plain(self, model_state: dict[str, torch.Tensor]) -> nn.Module:
        """The whole model to save (adapters folded in; unsharded under FSDP)."""
        if self.procs.on and self.recipe.distributed == "fsdp":
            from ..models import build

            plain = build(self.prepared.spec)
            plain.load_state_dict(model_state)
            return plain
        return merged(self.model)

    def save(self, step: int) -> None:
        model_state, optim_state = self._state()  # a collective under FSDP
        if self.procs.rank == 0:
            info = {"best": self.best, "best_step": self.best_step, "world": self.procs.world}
            self.checkpoint.save(step, self._plain(model_state), model_state, optim_state,
                                 info)  # fmt: skip
            write_metrics(self.folder / "metrics.csv", self.rows)
        if self.procs.on:
            dist.barrier()

    def restore(self) -> int:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        model_state, optim_state, info = self.checkpoint.load()
        full = self.procs.on and self.recipe.distributed == "fsdp"
        set_state_dict(self.wrapped, self.optimizer, model_state_dict=model_state,
                       optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=full))  # fmt: skip
        self.best, self.best_step = info.get("best"), info.get("best_step")
        step = int(info["step"])
        self.rows = read_metrics(self.folder / "metrics.csv", step)
        return step

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> float | None:
        cases = self.data.val_cases()
        if not cases:
            return None
        net = (
            self.wrapped
            if self.recipe.distributed == "fsdp" and self.procs.on
            else unwrap(self.model)
        )
        head, patch = self.prepared.head, tuple(self.recipe.data.patch)
        self.model.eval()
        try:
            with self.autocast() if callable(self.autocast) else nullcontext():
                if self.recipe.task == "segment":
                    return _dice(net, head, cases, patch, self.classes or 2,
                                 self.recipe.data.batch)  # fmt: skip
                if self.recipe.task == "classify":
                    return _accuracy(net, head, cases, patch)
                return _psnr(net, head, cases, patch, self.data)
        finally:
            self.model.train()

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        start_time = time.perf_counter()
        recipe, procs = self.recipe, self.procs
        start = self.restore() if self.resume else 0
        if procs.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text(self.folder / "recipe.yaml", dump_recipe(recipe))
            if recipe.tensorboard:
                self.writer = _tensorboard(self.folder / "tb")
        progress = _Progress(self.total, start, self.progress_quiet, procs.rank)
        progress.line(
            f"training {self.prepared.spec.get('name', 'model')}: {self.total} steps, "
            f"{self.prepared.trainable:,} of {self.prepared.total:,} parameters trained, "
            f"{procs.world} process(es), {self.data.train_cases()} training and "
            f"{len(self.data.val_cases())} held-out cases"
            + (f"; resumed at step {start}" if start else "")
        )
        self.model.train()
        last_loss = None
        self.evaluated = self.saved = start
        try:
            for step in range(start, self.total):
                last_loss = self.iteration(step, progress, start_time)
            if self.evaluated != self.total or self.total == start:
                self._evaluate(self.total, self.rows[-1] if self.rows else {}, progress)
            if self.saved != self.total:
                self.save(self.total)
        finally:
            progress.close()
            if self.writer is not None:
                self.writer.close()
        last = self.rows[-1].get(f"val_{self.metric}") if self.rows else None
        return TrainResult(
            out=str(self.folder), steps=self.total, metric=self.metric, last=last,
            best=self.best, best_step=self.best_step, loss=last_loss,
            trainable=self.prepared.trainable, parameters=self.prepared.total,
            seconds=round(time.perf_counter() - start_time, 2),
            resumed_from=start or None, world=procs.world, history=self.rows,
        )  # fmt: skip

    def iteration(self, step: int, progress: _Progress, start_time: float) -> float:
        """One pass of the loop: the step, its metrics row and progress, and the
        evaluation and checkpoint when due (what tools/bench_train.py --overhead times)."""
        recipe = self.recipe
        loss = self._step(step)
        lr = self.optimizer.param_groups[0]["lr"]
        row = {"step": step + 1, "loss": loss, "lr": lr,
               "seconds": round(time.perf_counter() - start_time, 3)}  # fmt: skip
        self.rows.append(row)
        if self.writer is not None:
            self.writer.add_scalar("loss", loss, step + 1)
            self.writer.add_scalar("lr", lr, step + 1)
        progress.step(loss, lr)
        done = step + 1
        if recipe.eval_every and done % recipe.eval_every == 0:
            self._evaluate(done, row, progress)
            self.evaluated = done
        if recipe.checkpoint_every and done % recipe.checkpoint_every == 0:
            self.save(done)
            self.saved = done
        return loss

    def _step(self, step: int) -> float:
        factor = _schedule(self.recipe, step, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        batch: Batch = self.data.batch(step, self.indices).to(self.procs.device)
        with self.autocast() if callable(self.autocast) else nullcontext():
            output = self.wrapped(batch.x)[self.prepared.head]
        loss = self.loss_fn(output, batch.targets())
        value = loss.detach().clone()
        if self.procs.on:
            dist.all_reduce(value)
            value /= self.procs.world
        value = float(value)
        if not math.isfinite(value):
            good = self.checkpoint.step()
            where = (f"the last good checkpoint is {self.checkpoint.last} (step {good})"
                     if good is not None else "no checkpoint was written yet")  # fmt: skip
            raise TrainError(
                f"the loss is {value} at step {step + 1}; training stopped before that "
                f"update; {where}; lower optimizer.lr, add warm-up (schedule.warmup), or "
                "check the data's intensities"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value

    def _evaluate(self, step: int, row: dict[str, float], progress: _Progress) -> None:
        value = self.evaluate()
        if value is None:
            return
        row[f"val_{self.metric}"] = value
        better = self.best is None or value > self.best
        if better:
            self.best, self.best_step = value, step
            model_state: dict = {}
            if self.procs.on and self.recipe.distributed == "fsdp":
                model_state, _ = self._state()  # a collective: every rank gathers
            if self.procs.rank == 0:
                self.checkpoint.save_best(self._plain(model_state), step, self.metric, value)
        if self.writer is not None:
            self.writer.add_scalar(f"val/{self.metric}", value, step)
        loss = row.get("loss")
        progress.line(
            f"step {step}/{self.total}: "
            + (f"loss {loss:.4f}, " if loss is not None else "")
            + f"val {self.metric} {value:.4f}"
            + (" (best)" if better else f" (best {self.best:.4f} at step {self.best_step})")
        )


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SpecError("tensorboard: true needs TensorBoard: pip install tensorboard",
                        "tensorboard") from None  # fmt: skip
    return SummaryWriter(str(folder))


# --------------------------------------------------------------------------- metrics


def _run(net: nn.Module, head: str, x: torch.Tensor) -> torch.Tensor:
    device = next(net.parameters()).device
    return net(x.to(device))[head].float()


def _dice(net: nn.Module, head: str, cases: list, patch: tuple, classes: int,
          batch: int) -> float:  # fmt: skip
    """Mean foreground Dice over the held-out cases, each predicted whole by sliding
    windows of the patch size with Gaussian blending (MONAI)."""
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)

    def predictor(x: torch.Tensor) -> torch.Tensor:  # [b, C, T, H, W] both ways
        return _run(net, head, x.transpose(1, 2)).transpose(1, 2)

    for _, item in cases:
        image = torch.from_numpy(item["image"])[None]
        logits = sliding_window_inference(image, patch, max(batch, 1), predictor,
                                          overlap=0.25, mode="gaussian")  # fmt: skip
        pred = logits.argmax(1, keepdim=True).cpu()
        label = torch.from_numpy(item["label"])[None]
        one_hot = lambda t: nn.functional.one_hot(t[:, 0], classes).movedim(-1, 1)  # noqa: E731
        metric(one_hot(pred), one_hot(label))
    return float(metric.aggregate().item())


def _centre(item: dict[str, Any], patch: Sequence[int]) -> dict[str, Any]:
    shape = item["image"].shape[1:]
    start = [max(d - p, 0) // 2 for d, p in zip(shape, patch, strict=True)]
    return {"image": crop(item["image"], start, patch)}


def _accuracy(net: nn.Module, head: str, cases: list, patch: tuple) -> float:
    right = 0
    for _, item in cases:
        x = torch.from_numpy(np.ascontiguousarray(_centre(item, patch)["image"]))
        out = _run(net, head, x.transpose(0, 1)[None])
        right += int(out.argmax(-1).item() == int(item["label"]))
    return right / len(cases)


def _psnr(net: nn.Module, head: str, cases: list, patch: tuple, data: TrainData) -> float:
    """PSNR (dB) of the restored centre patch of every held-out case against its clean
    version; the corruption is the training objective's, with fixed random numbers."""
    total = 0.0
    for i, (_, item) in enumerate(cases):
        clean = torch.from_numpy(np.ascontiguousarray(_centre(item, patch)["image"])).float()
        sample = {"image": clean}
        if data.objective is not None:
            data._corrupt(sample, np.random.default_rng([data.seed, 2**31, i]))
        out = _run(net, head, sample["image"].transpose(0, 1)[None])[0].transpose(0, 1).cpu()
        mse = float((out - clean).square().mean())
        span = float(clean.max() - clean.min()) or 1.0
        total += 10 * math.log10(span**2 / max(mse, 1e-12))
    return total / len(cases)


# --------------------------------------------------------------------------- entry


def train(
    recipe: Any,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    quiet: bool = False,
) -> TrainResult:
    """Train from a recipe (a .yaml path, YAML text or a mapping; see
    `stcnnt_dsl.train.recipe`) into the folder `out` (default runs/RECIPE_NAME).

    Writes `out/last.safetensors` (a whole model for `load_model`) with the resumable
    state at every checkpoint, `out/best.safetensors` at the best validation,
    `out/metrics.csv` and the resolved `out/recipe.yaml`. `resume=True` continues the
    run in `out` from its last checkpoint (the result is the same as an uninterrupted
    run's); a folder holding another run is refused unless `resume` or `overwrite`.
    Under `torchrun` the same call trains on every process (DDP or FSDP2)."""
    src = load_recipe(recipe, overrides=overrides)
    folder = _out_folder(src, out)
    with _Processes() as procs:
        _check_folder(folder, resume, overwrite, dump_recipe(src.recipe), procs.rank == 0)
        if procs.on:
            dist.barrier()
        run = Run(src, folder, resume, quiet, procs)
        return run.fit()


def resolved(recipe: Any) -> dict[str, Any]:
    """The recipe with every default filled in, as plain data."""
    return dump_plain(load_recipe(recipe).recipe)
