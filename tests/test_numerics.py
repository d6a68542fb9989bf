"""Numerics and determinism.

- Forward and backward stay finite under bfloat16 autocast on CPU (and float16 /
  bfloat16 autocast on CUDA, when there is a GPU) for inputs scaled by 1e-3 .. 1e3,
  and the low-precision output stays close to float32.
- Attention logits cannot overflow float16 (long temporal tokens included); cosine and
  qk_norm bound them (docs/numerics.md says what each option changes).
- `build(seed=...)` gives bit-identical weights in other processes; eval-mode forward
  is bit-identical from call to call and across processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stcnnt_dsl import build
from stcnnt_dsl.nn.functional import attend

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


_TINY = {"window": 4, "patch": 2, "heads": 2, "mixer_ratio": 2}
ARCHS = {
    # every cell kind, with batch norm on one level
    "tiny-unet": {"defaults": _TINY, "unet": {"channels": [8, 16], "blocks": "T1L1G1V1",
                                              "encoder": [{}, {"norm": "batch2d"}]}},
    "tiny-llm": {"defaults": _TINY, "llm": {"channels": 8, "blocks": ["C2 L1", "G1 T1",
                                                                      "C3 V1"]}},
    "tiny-cosine": {"defaults": {**_TINY, "cosine": True},
                    "unet": {"channels": [8, 16], "blocks": "T1L1G1"}},
    "tiny-qk-norm": {"defaults": {**_TINY, "qk_norm": True, "cell": "parallel"},
                     "hrnet": {"channels": [8, 16], "blocks": "T1L1G1"}},
    "tiny-layer-norm": {"input_size": [16, 16], "defaults": {**_TINY, "norm": "layer"},
                        "unet": {"channels": [8], "blocks": "L1G1T1"}},
    "unet-2d-small": "unet-2d-small",
    "unet-3d-small": "unet-3d-small",
}  # fmt: skip
SHAPE = (1, 3, 1, 16, 16)
SCALES = [1e-3, 1.0, 1e3]


def _input(scale: float, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)) * scale


def _finite_step(model: torch.nn.Module, x: torch.Tensor, device: str, dtype: torch.dtype):
    x = x.to(device).requires_grad_(True)
    with torch.autocast(device, dtype=dtype):
        y = model(x)
    y.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no gradients"
    assert torch.isfinite(y).all(), "forward"
    assert torch.isfinite(x.grad).all(), "input gradient"
    assert all(torch.isfinite(g).all() for g in grads), "parameter gradients"
    return y


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", list(ARCHS))
def test_bfloat16_autocast_on_cpu_is_finite(name: str, scale: float):
    model = build(ARCHS[name], seed=0).train()
    y = _finite_step(model, _input(scale), "cpu", torch.bfloat16)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["tiny-unet", "tiny-llm", "unet-2d-small"])
def test_bfloat16_stays_close_to_float32(name: str):
    model = build(ARCHS[name], seed=0).eval()
    x = _input(1.0)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    error = (low - reference).norm() / reference.norm()
    assert error < 0.05, float(error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", list(ARCHS))
def test_cuda_autocast_is_finite(name: str, scale: float, dtype: torch.dtype):
    model = build(ARCHS[name], seed=0, device="cuda").train()
    _finite_step(model, _input(scale), "cuda", dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("options", [{}, {"cosine": True}, {"qk_norm": True}])
def test_attention_logits_do_not_overflow(options: dict, dtype: torch.dtype):
    """Large q and k (weights grown in training) and long tokens (a temporal token is a
    whole frame) in half precision: the attention stays finite."""
    g = torch.Generator().manual_seed(0)
    cases = [
        [torch.randn(2, 4, 16, 64, generator=g) * 100 for _ in range(3)],  # short, large q/k
        [torch.randn(1, 1, 4, 65_536, generator=g) for _ in range(3)],  # a long token
    ]
    cases[1][1] = cases[1][0].clone()  # q == k: the largest possible q.k
    for i, (q, k, v) in enumerate(cases):
        out = attend(q.to(dtype), k.to(dtype), v.to(dtype), **options)
        assert torch.isfinite(out).all()
        if i == 0 and not options:
            continue  # saturated softmax: rounding q, k may flip a row's argmax
        reference = attend(q, k, v, **options)
        assert torch.allclose(out.float(), reference, atol=0.1 * reference.abs().max().item())


def test_cosine_and_qk_norm_bound_the_logits():
    """What the two options change (docs/numerics.md): cosine attention's logits are
    cosines (|logit| <= 1, no temperature), qk_norm's are O(sqrt(d)), whatever the
    scale of q and k; plain attention's grow with |q||k|."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, 8, 64, generator=g) * 1000 for _ in range(2))
    eye = torch.eye(8).view(1, 1, 8, 8)  # v = identity: the output is the probabilities
    plain = attend(q, k, eye)
    cosine = attend(q, k, eye, cosine=True)
    qk_norm = attend(q, k, eye, qk_norm=True)
    assert plain.max(dim=-1).values.min() > 0.99  # saturated: one-hot rows
    bound = math.e**2 / (math.e**2 + 8 - 1)  # logits in [-1, 1], 8 tokens
    assert cosine.max() <= bound + 1e-6  # bounded logits: no row can saturate
    assert qk_norm.max(dim=-1).values.min() < plain.max(dim=-1).values.min()


# --------------------------------------------------------------------------- determinism


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


_DETERMINISM_ARCHS = ["tiny-unet", "tiny-qk-norm", "unet-2d-small", "llm"]


def _fingerprints() -> dict[str, dict[str, str]]:
    out = {}
    for name in _DETERMINISM_ARCHS:
        model = build(ARCHS.get(name, name), seed=0).eval()
        with torch.no_grad():
            y = model(_input(1.0))
        out[name] = {
            "weights": _digest(model),
            "output": hashlib.sha256(y.numpy().tobytes()).hexdigest(),
        }
    return out


def test_seeded_builds_and_eval_outputs_are_identical_across_processes():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STCNNT_TEST_THREADS": "1"}
    runs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads(result.stdout))
    assert runs[0] == runs[1]
    here = _fingerprints()
    for name in _DETERMINISM_ARCHS:
        assert here[name]["weights"] == runs[0][name]["weights"], name


def test_eval_forward_is_bit_identical_call_to_call():
    for name in ("tiny-unet", "tiny-llm", "tiny-qk-norm"):
        model = build(ARCHS[name], seed=0).eval()
        x = _input(1.0)
        with torch.no_grad():
            first, second = model(x), model(x)
        assert torch.equal(first, second), name


def test_deterministic_algorithms_mode_runs():
    """Users who turn on torch's deterministic mode can train (forward and backward)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = build(ARCHS["tiny-unet"], seed=0)
        model(_input(1.0)).square().mean().backward()
    finally:
        torch.use_deterministic_algorithms(previous)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("STCNNT_TEST_THREADS", "1")))
    print(json.dumps(_fingerprints()))
