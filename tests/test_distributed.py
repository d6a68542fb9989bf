"""Scale-out: backbones train under DDP and FSDP2 exactly as they do on one process.

Two CPU processes (gloo) are started once and run every check in them:
- a small U-Net and a small HR-Net (instance norms: per-sample statistics, so splitting
  the batch does not change the math) train 3 steps of SGD with momentum under DDP and
  under FSDP2 (`fully_shard` on every stage of the model graph, then the root), each with
  and without activation checkpointing; their parameters must then equal those of one
  process that trained on the whole batch;
- a model converted with `SyncBatchNorm.convert_sync_batchnorm` stops training on CPU
  with our message.
Then `examples/train_ddp.py` runs under the real `torchrun` entry point.

Tolerance: the parameters after 3 steps agree to rtol 1e-5 / atol 1e-6 (float32). What
differs is only the order of float32 sums (the all-reduce adds two half-batch gradients;
one process sums the whole batch at once), about 1e-7 relative per gradient. SGD's update
is linear in the gradient, so the difference stays that size: measured at most 1.3e-7
absolute (HR-Net under FSDP2) against weight changes of up to 0.07 (U-Net) and 0.09
(HR-Net); the test checks that the weights move, so it cannot pass by training nothing.
Adam would divide by sqrt(v) and turn the noise in gradients that are zero in exact
arithmetic (a bias right before an instance norm) into full-size steps.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import stcnnt_dsl
from stcnnt_dsl.nn import Block
from stcnnt_dsl.nn.norms import Norm5d

WORLD = 2
BATCH = 4  # 2 samples per process
STEPS = 3
RTOL, ATOL = 1e-5, 1e-6
ROOT = Path(__file__).resolve().parents[1]

# A few thousand parameters each (U-Net 7.9 k, HR-Net 7.6 k) on 16 x 16 inputs.
_DEFAULTS = {"window": 4, "patch": 2, "grid": 2, "heads": 1, "mixer_ratio": 1.0}
SPECS = {
    "unet": {
        "name": "tiny-unet", "in_channels": 1, "defaults": _DEFAULTS,
        "unet": {"channels": [2, 4], "blocks": "T1L1G1", "gate": True},
    },
    "hrnet": {
        "name": "tiny-hrnet", "in_channels": 1, "defaults": _DEFAULTS,
        "hrnet": {"channels": [2, 4], "levels": 2, "blocks": "T1L1G1"},
    },
}  # fmt: skip
RUNS = [(arch, wrapper, ckpt) for arch in SPECS for wrapper in ("ddp", "fsdp2") for ckpt in (0, 1)]

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch has no torch.distributed with the gloo backend",
)


def _spec(arch: str, checkpoint: bool = False, norm: str | None = None) -> dict:
    spec = SPECS[arch]
    defaults = dict(spec["defaults"], checkpoint=checkpoint)
    if norm:
        defaults["norm"] = norm
    return {**spec, "defaults": defaults}


def _batch(step: int, out_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of one step: input [4, 2, 1, 16, 16] and a regression target."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 2, 1, 16, 16, generator=g)
    return x, torch.randn(BATCH, 2, out_channels, 16, 16, generator=g)


def _train(model: nn.Module, run, shard: slice) -> None:
    """3 steps of SGD with momentum on this process's share of each batch. The loss is
    the mean over all elements: the mean of the per-process means for equal shares."""
    optimizer = torch.optim.SGD(run.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x, target = _batch(step, model.out_channels)
        loss = (run(x[shard]) - target[shard]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if hasattr(p, "full_tensor"):  # FSDP2: a sharded DTensor (a collective)
            p = p.full_tensor()
        out[name] = p.detach().clone()
    return out


def _fully_shard():
    """FSDP2's `fully_shard` where this torch has it, else None."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            return None
    return fully_shard


def _shard_per_stage(model: nn.Module, fully_shard, mesh) -> None:
    """One FSDP2 group per stage (each graph node that owns a module), then the root."""
    for node in model.graph.nodes:
        if node.has_module:
            fully_shard(model.get_submodule(node.name), mesh=mesh)
    fully_shard(model, mesh=mesh)


def _sync_batchnorm_on_cpu(norm: str) -> str:
    model = nn.SyncBatchNorm.convert_sync_batchnorm(stcnnt_dsl.build(_spec("unet", norm=norm)))
    try:
        model(_batch(0, 1)[0][:2])
    except stcnnt_dsl.STCNNTError as err:
        return str(err)
    return "no error"


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=120),  # a hang becomes an error, not a stuck test
    )  # fmt: skip
    try:
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        fully_shard = _fully_shard()
        mesh = None
        if fully_shard is not None:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (WORLD,))
        results: dict[str, object] = {}
        for arch, wrapper, ckpt in RUNS:
            model = stcnnt_dsl.build(_spec(arch, bool(ckpt)), seed=0)
            if wrapper == "ddp":
                run = nn.parallel.DistributedDataParallel(model)
            elif fully_shard is None:
                results[f"{arch}/{wrapper}/{ckpt}"] = None
                continue
            else:  # an error here is a failure of ours, not a skip
                _shard_per_stage(model, fully_shard, mesh)
                run = model
            _train(model, run, shard)
            results[f"{arch}/{wrapper}/{ckpt}"] = _params(model)
        for norm in ("batch2d", "batch3d"):
            results[f"syncbn/{norm}"] = _sync_batchnorm_on_cpu(norm)
        if rank == 0:
            torch.save(results, os.path.join(result_dir, "results.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return torch.load(tmp / "results.pt", weights_only=False)


@pytest.fixture(scope="module")
def one_process() -> dict[str, dict[str, torch.Tensor]]:
    """Each architecture trained on the whole batch by one process (no wrapper)."""
    out = {}
    for arch in SPECS:
        model = stcnnt_dsl.build(_spec(arch), seed=0)
        out[arch] = {"init": _params(model)}
        _train(model, model, slice(None))
        out[arch]["trained"] = _params(model)
    return out


@pytest.mark.parametrize(("arch", "wrapper", "ckpt"), RUNS)
def test_parameters_after_3_steps_match_one_process(distributed, one_process, arch, wrapper, ckpt):
    got = distributed[f"{arch}/{wrapper}/{ckpt}"]
    if got is None:  # only a torch without FSDP2 gets here
        pytest.skip(f"torch {torch.__version__} has no fully_shard (FSDP2)")
    want, init = one_process[arch]["trained"], one_process[arch]["init"]
    assert got.keys() == want.keys()
    moved = max((want[k] - init[k]).abs().max().item() for k in want)
    assert moved > 1e3 * ATOL, "the training steps must move the weights well past the tolerance"
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("arch", SPECS)
def test_checkpoint_in_defaults_checkpoints_every_block(arch):
    """What the checkpointed runs above rely on: `checkpoint: true` reaches every block."""
    blocks = [m for m in stcnnt_dsl.build(_spec(arch, True)).modules() if isinstance(m, Block)]
    assert blocks and all(b.use_checkpoint for b in blocks)


@pytest.mark.parametrize("norm", ["batch2d", "batch3d"])
def test_sync_batchnorm_on_cpu_says_what_to_do(distributed, norm):
    message = distributed[f"syncbn/{norm}"]
    assert f"{norm} norm" in message
    assert "GPUs only" in message and "instance2d" in message and "do not convert" in message


@pytest.mark.parametrize("norm", ["batch2d", "batch3d"])
def test_sync_batchnorm_conversion_replaces_our_batch_norms(norm):
    """Structure on CPU: every BatchNorm inside our norms becomes a SyncBatchNorm with the
    same weights and buffers; outside a process group it computes what BatchNorm does
    (training and eval), so it gets valid input (batch3d: [B, C, T, H, W])."""
    plain = stcnnt_dsl.build(_spec("unet", norm=norm), seed=0)
    model = stcnnt_dsl.build(_spec("unet", norm=norm), seed=0)
    assert nn.SyncBatchNorm.convert_sync_batchnorm(model) is model  # converted in place
    kinds = {type(m) for m in model.modules()}
    assert nn.SyncBatchNorm in kinds and not kinds & {nn.BatchNorm2d, nn.BatchNorm3d}
    norms = [m for m in model.modules() if isinstance(m, Norm5d)]
    assert norms and all(isinstance(m.norm, nn.SyncBatchNorm) for m in norms)
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = _batch(0, 1)[0]
    torch.testing.assert_close(model(x), plain(x))  # training: batch statistics
    torch.testing.assert_close(model.state_dict(), plain.state_dict())  # running stats
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))


def test_sync_batchnorm_in_a_one_process_group_says_what_to_do(tmp_path):
    model = nn.SyncBatchNorm.convert_sync_batchnorm(stcnnt_dsl.build(_spec("unet", norm="batch2d")))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        with pytest.raises(stcnnt_dsl.STCNNTError, match=r"GPUs only.*instance2d"):
            model(_batch(0, 1)[0])
        model.eval()(_batch(0, 1)[0])  # inference needs no synchronisation
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- torchrun


def _torchrun(*args: str, tmp_path: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:  # an installed torch always has it next to the interpreter
        pytest.fail(f"no torchrun next to {sys.executable}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", str(WORLD),
         str(ROOT / "examples" / "train_ddp.py"), "--size", "16", "--frames", "2", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _losses(result: subprocess.CompletedProcess, steps: int) -> list[float]:
    assert result.returncode == 0, result.stdout + result.stderr
    losses = [float(v) for v in re.findall(r"^step \d+/\d+ loss (\S+)$", result.stdout, re.M)]
    assert len(losses) == steps, result.stdout  # printed once (by rank 0) per step
    assert all(0 < v < 10 for v in losses)
    return losses


def test_torchrun_fsdp2_with_checkpointing_trains_and_saves(tmp_path):
    result = _torchrun("--steps", "3", "--fsdp", "--checkpoint", "--save", "bb.safetensors",
                       tmp_path=tmp_path)  # fmt: skip
    _losses(result, 3)
    assert "FSDP2 on 2 processes, gloo on cpu" in result.stdout
    trained = stcnnt_dsl.load_model(tmp_path / "bb.safetensors")
    init = stcnnt_dsl.build(trained.spec, seed=0, layout=trained.layout)
    assert trained.spec.defaults.checkpoint is True
    assert trained.state_dict().keys() == init.state_dict().keys()
    pairs = zip(trained.parameters(), init.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)  # it trained


@pytest.mark.slow
def test_torchrun_ddp_trains(tmp_path):
    losses = _losses(_torchrun("--steps", "8", tmp_path=tmp_path), 8)
    assert min(losses[-3:]) < losses[0]


# --------------------------------------------------------------------------- GPUs


def _gpu_worker(rank: int, init_file: str, result_dir: str) -> None:
    """SyncBatchNorm over two GPUs (nccl): each takes half the batch; the outputs and the
    gradients must be those of plain batch norm over the whole batch on one GPU."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, device_id=device)  # fmt: skip
    try:
        results = {}
        for norm in ("batch2d", "batch3d"):
            model = stcnnt_dsl.build(_spec("unet", norm=norm), seed=0, device=device)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            run = nn.parallel.DistributedDataParallel(model, device_ids=[rank])
            x, target = (t.to(device) for t in _batch(0, model.out_channels))
            shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
            out = run(x[shard])
            (out - target[shard]).square().mean().backward()
            out = out.detach().contiguous()  # nccl gathers contiguous tensors
            gathered = [torch.empty(out.shape, device=device) for _ in range(WORLD)]
            dist.all_gather(gathered, out)
            grads = {n: p.grad.cpu() for n, p in model.named_parameters()}
            results[norm] = (torch.cat(gathered).cpu(), grads)
        if rank == 0:
            torch.save(results, os.path.join(result_dir, "gpu.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not (dist.is_nccl_available() and torch.cuda.device_count() >= WORLD),
    reason=f"needs {WORLD} CUDA GPUs and NCCL",
)
def test_sync_batchnorm_on_gpus_equals_batch_norm_on_the_whole_batch(tmp_path, monkeypatch):
    mp.spawn(_gpu_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = torch.load(tmp_path / "gpu.pt", weights_only=False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # as the workers
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    for norm, (out, grads) in results.items():
        model = stcnnt_dsl.build(_spec("unet", norm=norm), seed=0, device="cuda:0")
        x, target = (t.to("cuda:0") for t in _batch(0, model.out_channels))
        want = model(x)
        (want - target).square().mean().backward()
        torch.testing.assert_close(out, want.detach().cpu(), rtol=1e-4, atol=1e-5, msg=norm)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad.cpu(), rtol=1e-4, atol=1e-6, msg=name)
