"""Scale-out: a built backbone trains under DDP and FSDP2 (`fully_shard` per block).

Two CPU processes (gloo) each take one sample of a batch of two; their averaged
gradients must equal the gradients of one process on the whole batch. Both wrappers
run in the same two processes to pay the process start-up once.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import stcnnt_dsl

WORLD = 2
# A tiny LLM-style stack: per-sample norms, so the batch split does not change the math.
SPEC = {
    "name": "tiny-llm",
    "in_channels": 1,
    "defaults": {"window": 4, "patch": 2, "grid": 2, "norm": "instance2d"},
    "llm": {"channels": 8, "blocks": ["T1L1G1", "T1L1G1"], "dense_skips": True},
}

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def _batch() -> torch.Tensor:
    return torch.randn(WORLD, 2, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _loss(out: torch.Tensor) -> torch.Tensor:
    # The mean over all elements: the mean of the per-rank means for equal shards.
    return out.square().mean()


def _fsdp2():
    """`fully_shard` where this torch has it (FSDP2), else None."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            return None
    return fully_shard


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if hasattr(g, "full_tensor"):  # FSDP2 keeps sharded DTensor gradients
            g = g.full_tensor()
        out[name.replace("module.", "")] = g.detach().clone()
    return out


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x = _batch()[rank : rank + 1]
        results: dict[str, object] = {}

        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(stcnnt_dsl.build(SPEC, seed=0))
        _loss(ddp(x)).backward()
        results["ddp"] = _grads(ddp.module)

        fully_shard = _fsdp2()
        if fully_shard is None:
            results["fsdp2"] = f"torch {torch.__version__} has no fully_shard (FSDP2)"
        else:  # an error here is a failure of ours, not a skip
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (WORLD,))
            model = stcnnt_dsl.build(SPEC, seed=0)
            for block in model.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            _loss(model(x)).backward()
            results["fsdp2"] = _grads(model)
        if rank == 0:
            torch.save(results, os.path.join(result_dir, "grads.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_grads(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return torch.load(tmp / "grads.pt", weights_only=False)


@pytest.fixture(scope="module")
def single_process_grads() -> dict[str, torch.Tensor]:
    model = stcnnt_dsl.build(SPEC, seed=0)
    _loss(model(_batch())).backward()
    return _grads(model)


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_gradients_match_one_process(distributed_grads, single_process_grads):
    _assert_same(distributed_grads["ddp"], single_process_grads)


def test_fsdp2_gradients_match_one_process(distributed_grads, single_process_grads):
    result = distributed_grads["fsdp2"]
    if isinstance(result, str):  # only a torch without FSDP2 gets here
        pytest.skip(result)
    _assert_same(result, single_process_grads)
