#!/usr/bin/env python
"""The data layer's two costs, measured side by side.

1. Loading never starves training: a synthetic nnU-Net data set (examples/make_dataset.py)
   is read through `stcnnt_dsl.data` into a MONAI `CacheDataset` (cases loaded and
   normalised once, in the first epoch), then random patches are cropped and batched by
   MONAI's transforms and `DataLoader`. After the first epoch, the time to get one batch
   ([B, T, C, H, W] tensors) is compared with one training step (forward, loss,
   backward, AdamW) of the bundled `unet` at the same patch and batch, interleaved.
   The issue's bound: loading <= 10% of a step.
2. Prediction of a volume larger than a window: `stcnnt_dsl.data.predict_image` (normalise,
   MONAI's `sliding_window_inference` with Gaussian blending, softmax, argmax) against
   MONAI's `sliding_window_inference` called directly on the same weights (the model built
   in MONAI's BCHWD layout), same window, overlap and batch. Each run is a fresh process
   (so its peak memory is its own), alternating ours / MONAI's; the peak resident memory
   above what the process held before predicting (model and volume loaded) is compared with
   the bound: the volume, its output (and MONAI's weight map), and the activations of
   `--batch` windows (measured alone in a third process).

Usage:
    python tools/bench_data.py                      # both parts (about 5 min on 2 cores)
    python tools/bench_data.py --part window --volume 32,160,160 --repeats 2
    python tools/bench_data.py --json bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import stcnnt_dsl  # noqa: E402
from stcnnt_dsl.data import open_dataset  # noqa: E402
from stcnnt_dsl.data.predict import normalize, predict_image  # noqa: E402
from stcnnt_dsl.machine import cpu  # noqa: E402


def machine() -> str:
    load = os.getloadavg()[0]
    return (f"{cpu().describe()}, {torch.get_num_threads()} torch thread(s), "
            f"load average {load:.1f}, torch {torch.__version__}")  # fmt: skip


def _rss() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS"))
    return int(line.split()[1]) * 1024


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- part 1


def _loader(root: Path, patch: tuple[int, int, int], batch: int) -> Any:
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, RandSpatialCropd, SpatialPadd

    ds = open_dataset(root)

    def load(item: dict[str, int]) -> dict[str, Any]:
        image, label = ds.load(item["index"])
        return {"image": normalize(image.array).transpose(1, 0, 2, 3),  # [C, T, H, W]
                "label": label.transpose(1, 0, 2, 3)}  # fmt: skip

    transform = Compose([
        load,
        SpatialPadd(keys=["image", "label"], spatial_size=patch),
        RandSpatialCropd(keys=["image", "label"], roi_size=patch, random_size=False),
    ])  # fmt: skip
    items = [{"index": i} for i in range(len(ds))]
    cached = CacheDataset(items, transform=transform, progress=False, num_workers=0)
    return DataLoader(cached, batch_size=batch, shuffle=True, num_workers=0)


def bench_loading(args: argparse.Namespace) -> dict[str, Any]:
    from make_dataset import make_dataset

    patch = tuple(args.patch)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "ds", kind="3d", cases=args.cases, seed=0,
                            size=(61, 77), frames=(patch[0], patch[0] + 4))  # fmt: skip
        start = time.perf_counter()
        loader = _loader(root, patch, args.batch)
        first_epoch = time.perf_counter() - start
        batches = iter(())

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal batches
            try:
                item = next(batches)
            except StopIteration:
                batches = iter(loader)
                item = next(batches)
            return item["image"].permute(0, 2, 1, 3, 4), item["label"].permute(0, 2, 1, 3, 4)

        spec = stcnnt_dsl.load_spec("unet").model_dump(exclude_none=True, round_trip=True)
        spec["heads"] = {"seg": {"kind": "segmentation", "classes": 3}}
        model = stcnnt_dsl.build(spec, seed=0).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = next_batch()

        def step() -> None:
            logits = model(x)["seg"]  # [B, T, K, H, W]
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y[:, :, 0].long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()  # warm-up
        load_times, step_times = [], []
        for _ in range(args.runs):  # interleaved: the machine's load hits both alike
            start = time.perf_counter()
            for _ in range(10):
                next_batch()
            load_times.append((time.perf_counter() - start) / 10)
            start = time.perf_counter()
            step()
            step_times.append(time.perf_counter() - start)
    load, train = statistics.median(load_times), statistics.median(step_times)
    return {
        "patch": list(patch), "batch": args.batch, "cases": args.cases,
        "first_epoch_s": round(first_epoch, 3), "batch_load_ms": round(load * 1e3, 3),
        "train_step_ms": round(train * 1e3, 1), "ratio": round(load / train, 5),
    }  # fmt: skip


# --------------------------------------------------------------------------- part 2


def _window_model(layout: str = "BTCHW") -> torch.nn.Module:
    spec = stcnnt_dsl.load_spec("unet-3d-small").model_dump(exclude_none=True, round_trip=True)
    spec["heads"] = {"seg": {"kind": "segmentation", "classes": 2}}
    return stcnnt_dsl.build(spec, seed=0, layout=layout).eval()


def child(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints a JSON line."""
    from monai.inferers import sliding_window_inference

    volume = tuple(args.volume)
    patch = tuple(args.window)
    rng = np.random.default_rng(0)
    array = (1000 + 200 * rng.standard_normal((volume[0], 1, *volume[1:]))).astype(np.float32)
    model = _window_model("BCHWD" if args.child == "monai" else "BTCHW")
    before = _rss()
    start = time.perf_counter()
    with torch.inference_mode():
        if args.child == "ours":
            image = stcnnt_dsl.data.Image(array)
            predict_image(model, image, patch=patch, overlap=args.overlap, batch=args.batch)
        elif args.child == "monai":
            x = torch.from_numpy(normalize(array)).permute(1, 2, 3, 0)[None]  # [1, C, H, W, D]
            roi = (patch[1], patch[2], patch[0])
            out = sliding_window_inference(x, roi, args.batch, lambda v: model(v)["seg"],
                                           overlap=args.overlap, mode="gaussian")  # fmt: skip
            out.softmax(1).argmax(1)  # what predict_image hands back, too
        else:  # the activations of --batch windows alone
            model(torch.zeros(args.batch, patch[0], 1, patch[1], patch[2]))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_above_start": _peak() - before}))


def _run_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", kind, "--volume", ",".join(map(str, args.volume)),
        "--window", ",".join(map(str, args.window)), "--overlap", str(args.overlap),
        "--batch", str(args.batch),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_window(args: argparse.Namespace) -> dict[str, Any]:
    windows = _run_child("window", args)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "monai": []}
    for _ in range(args.repeats):
        for kind in ("ours", "monai"):
            runs[kind].append(_run_child(kind, args))
    t, h, w = args.volume
    voxels, classes = t * h * w, 2
    # volume-sized float32 arrays: the input's normalised copies (3), per class the blended
    # logits, probabilities and the int64 label map (3), MONAI's weight map and padding (3)
    volume_bytes = 4 * voxels
    bound = volume_bytes * (3 + 3 * classes + 3) + windows["peak_above_start"]
    ours = statistics.median(r["seconds"] for r in runs["ours"])
    monai = statistics.median(r["seconds"] for r in runs["monai"])
    peak = max(r["peak_above_start"] for r in runs["ours"])
    return {
        "model": "unet-3d-small + segmentation head (2 classes)",
        "volume": list(args.volume), "window": list(args.window), "overlap": args.overlap,
        "batch": args.batch, "ours_s": [round(r["seconds"], 2) for r in runs["ours"]],
        "monai_s": [round(r["seconds"], 2) for r in runs["monai"]],
        "speed_ratio": round(ours / monai, 3),
        "peak_ours_mib": round(peak / 2**20, 1),
        "peak_monai_mib": round(max(r["peak_above_start"] for r in runs["monai"]) / 2**20, 1),
        "window_activations_mib": round(windows["peak_above_start"] / 2**20, 1),
        "bound_mib": round(bound / 2**20, 1), "memory_ratio": round(peak / bound, 3),
        "volumes_held": round((peak - windows["peak_above_start"]) / volume_bytes, 1),
        "whole_volume_activations_gib": _activations((t, h, w)),
        "activations_512x512x64_gib": _activations((64, 512, 512)),
    }  # fmt: skip


def _activations(shape: tuple[int, int, int]) -> float:
    """The model graph's estimate of the activations of one pass over the whole volume
    (H and W rounded up to sizes the model takes)."""
    t, h, w = (-(-v // 16) * 16 if i else v for i, v in enumerate(shape))
    report = stcnnt_dsl.profile(_window_model(), (1, t, 1, h, w), runs=0)
    return round(report.to_dict()["activation_bytes"] / 2**30, 1)


def _triple(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("loading", "window", "all"), default="all")
    parser.add_argument("--patch", type=_triple, default=[8, 64, 64], help="T,H,W (part 1)")
    parser.add_argument("--batch", type=int, default=2, help="batch / windows per pass")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (part 1)")
    parser.add_argument("--volume", type=_triple, default=[32, 160, 160], help="T,H,W (part 2)")
    parser.add_argument("--window", type=_triple, default=[32, 96, 96], help="T,H,W (part 2)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (part 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--child", choices=("ours", "monai", "window"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    results: dict[str, Any] = {"machine": machine()}
    print(results["machine"])
    if args.part in ("loading", "all"):
        results["loading"] = r = bench_loading(args)
        print(f"loading: a cached batch {r['batch_load_ms']} ms vs a unet training step "
              f"{r['train_step_ms']} ms at patch {r['patch']}, batch {r['batch']}: "
              f"ratio {r['ratio']} (bound 0.1); first epoch {r['first_epoch_s']} s")  # fmt: skip
    if args.part in ("window", "all"):
        results["window"] = r = bench_window(args)
        print(f"window: {r['volume']} through {r['model']}, window {r['window']}, overlap "
              f"{r['overlap']}, batch {r['batch']}: ours {r['ours_s']} s, MONAI {r['monai_s']} s, "
              f"ratio {r['speed_ratio']}; peak {r['peak_ours_mib']} MiB (MONAI "
              f"{r['peak_monai_mib']}) vs bound {r['bound_mib']} MiB (volume, output, "
              f"{r['window_activations_mib']} MiB of window activations): {r['memory_ratio']}; "
              f"the whole volume at once: {r['whole_volume_activations_gib']} GiB of "
              f"activations (64x512x512: {r['activations_512x512x64_gib']} GiB)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
