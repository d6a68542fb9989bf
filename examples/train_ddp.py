"""Train an ST-CNNT backbone on several processes: DDP, or FSDP2 with --fsdp.

The task is synthetic (denoise moving blobs made in code: nothing is downloaded), the
run is a few steps, and rank 0 prints the loss averaged over all processes.

    torchrun --nproc_per_node 2 examples/train_ddp.py                 # CPU: gloo
    torchrun --nproc_per_node 8 examples/train_ddp.py --fsdp --bf16   # 8 GPUs: nccl
    # two nodes of 8 GPUs: the same line on both, NODE0 = the first node's address
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint NODE0:29500 --rdzv_id demo examples/train_ddp.py --fsdp

The backend follows the device: nccl on GPUs, gloo on CPU (--cpu forces the CPU).
--fsdp shards every stage of the model graph (FSDP2's `fully_shard`), --checkpoint sets
`checkpoint: true` (activation checkpointing of every block), --sync-batchnorm converts
batch norms to SyncBatchNorm (GPUs only), --save writes the trained backbone.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

import stcnnt_dsl

# A small U-Net; --arch takes anything stcnnt_dsl.load_spec accepts (a bundled name, a
# YAML file, an expression).
ARCH = "unet(channels=[8, 16], blocks=T1L1G1, heads=2, defaults={window=4, grid=2, patch=2})"
LAYOUT = "BCTHW"  # [B, C, T, H, W]: a Conv3d with kernel 1 is then a per-frame 1x1 conv

# FSDP2 warns when a sharded module returns a view (our resamplers return reshaped conv
# outputs): that only matters if a later op changes the view in place, which no module
# of ours does (tests/test_distributed.py checks the weights against one process).
warnings.filterwarnings(
    "ignore", message=r"FSDP2-wrapped module \(FSDP(Downsample|Upsample)\) returned a view"
)


class Denoiser(nn.Module):
    """The backbone and a per-frame 1x1 convolution back to the input's channels.

    With task heads in the spec (`heads: {denoise: {kind: enhancement, out_channels: 1}}`)
    `stcnnt_dsl.build` returns the whole model and this class goes away."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv3d(backbone.out_channels, backbone.in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=ARCH, help="anything stcnnt_dsl.load_spec accepts")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=2, help="samples per process and step")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=32, help="H = W")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fsdp", action="store_true", help="FSDP2 per stage instead of DDP")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    p.add_argument("--sync-batchnorm", action="store_true", help="SyncBatchNorm (GPUs)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even with GPUs")
    p.add_argument("--save", help="write the trained backbone here (.safetensors)")
    return p.parse_args(argv)


def setup(cpu: bool) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    if "RANK" not in os.environ:
        sys.exit(f"start me with torchrun, e.g.: torchrun --nproc_per_node 2 {sys.argv[0]}")
    if torch.cuda.is_available() and not cpu:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def spec_of(arch: str, checkpoint: bool) -> dict[str, Any]:
    spec = yaml.safe_load(stcnnt_dsl.dump_spec(stcnnt_dsl.load_spec(arch)))
    if checkpoint:
        spec.setdefault("defaults", {})["checkpoint"] = True
    return spec


def stage_names(backbone: nn.Module) -> list[str]:
    """The graph's nodes that own a module (`encoder.0`, `down.0`, ...; merges have none)."""
    return [node.name for node in backbone.graph.nodes if node.has_module]


def fully_shard_stages(model: Denoiser, device: torch.device) -> None:
    """FSDP2: one parameter group per stage, then the root (the head and the rest)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for name in stage_names(model.backbone):
        fully_shard(model.backbone.get_submodule(name), mesh=mesh)
    fully_shard(model, mesh=mesh)


def synthetic_batch(args: argparse.Namespace, step: int, rank: int, channels: int):
    """(noisy, clean) [B, C, T, H, W]: a Gaussian blob moving across the frames, in every
    channel, plus noise. Each (step, rank) has its own samples."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + rank)
    b, t, s = args.batch, args.frames, args.size
    axis = torch.arange(s, dtype=torch.float32)
    start = torch.rand(b, 2, generator=g) * s
    velocity = (torch.rand(b, 2, generator=g) - 0.5) * s / max(t, 1)
    centre = start[:, None] + velocity[:, None] * torch.arange(t)[None, :, None]  # [B, T, 2]
    dy = axis[None, None, :, None] - centre[..., 0, None, None]
    dx = axis[None, None, None, :] - centre[..., 1, None, None]
    clean = torch.exp(-(dy.square() + dx.square()) / (2 * (s / 8) ** 2))  # [B, T, H, W]
    clean = clean[:, None].expand(b, channels, t, s, s).contiguous()
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=g)
    return noisy, clean


def save_backbone(model: nn.Module, path: str, spec: dict) -> None:
    """Gather the full weights (a collective under FSDP2: every rank calls it) and let
    rank 0 write the backbone with `stcnnt_dsl.save_model`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # no "module." prefix for DDP
    if dist.get_rank() == 0:
        backbone = stcnnt_dsl.build(spec, layout=LAYOUT)
        prefix = "backbone."
        backbone.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
        stcnnt_dsl.save_model(backbone, path)
        print(f"saved the backbone to {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup(args.cpu)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        spec = spec_of(args.arch, args.checkpoint)
        # The same seed on every rank: the same initial weights everywhere.
        model = Denoiser(stcnnt_dsl.build(spec, layout=LAYOUT, seed=args.seed)).to(device)
        if args.sync_batchnorm:
            if device.type == "cpu":  # DDP would refuse it; FSDP2 would stop at the forward
                sys.exit(
                    "--sync-batchnorm: torch synchronises batch norms on GPUs only; on CPU "
                    "use norm: instance2d (or instance3d), or leave the model unconverted"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if args.fsdp:
            fully_shard_stages(model, device)
            wrapped = model
        else:
            ids = [device.index] if device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        optimizer = torch.optim.AdamW(wrapped.parameters(), lr=args.lr)
        if rank == 0:
            params = sum(p.numel() for p in model.parameters())  # DTensors: global sizes
            print(
                f"{'FSDP2' if args.fsdp else 'DDP'} on {world} processes, "
                f"{dist.get_backend()} on {device.type}, ~{params:,} parameters",
                flush=True,
            )
        channels = model.backbone.in_channels
        for step in range(args.steps):
            noisy, clean = (t.to(device) for t in synthetic_batch(args, step, rank, channels))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = nn.functional.mse_loss(wrapped(noisy).float(), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean)  # SUM (gloo has no AVG)
            if rank == 0:
                print(f"step {step + 1}/{args.steps} loss {mean.item() / world:.6f}", flush=True)
        if args.save:
            save_backbone(model, args.save, spec)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
