"""The profile's notes on reduced precision say what was measured on each CPU family."""

from __future__ import annotations

import torch

from stcnnt_dsl.machine import CPU
from stcnnt_dsl.tools import profile as prof


def _notes(monkeypatch, flags: set[str], dtype=torch.bfloat16) -> list[str]:
    monkeypatch.setattr(prof, "cpu", lambda: CPU("test", frozenset(flags)))
    return prof._dtype_notes(torch.device("cpu"), dtype)


def test_bf16_notes_follow_the_cpu(monkeypatch):
    (avx2,) = _notes(monkeypatch, {"avx2", "fma"})
    assert "no native support" in avx2 and "19x slower" in avx2
    (avx512,) = _notes(monkeypatch, {"avx2", "avx512f", "avx512_bf16"})
    assert "without AMX" in avx512 and "training steps 1.2-1.4x faster" in avx512
    assert _notes(monkeypatch, {"avx512_bf16", "amx_bf16", "amx_tile"}) == []
    assert prof.native_bf16() is True
    monkeypatch.setattr(prof, "cpu", lambda: CPU("unknown", frozenset()))
    assert prof.native_bf16() is None


def test_no_note_for_float32_or_gpus(monkeypatch):
    assert _notes(monkeypatch, {"avx2"}, dtype=None) == []
    assert prof._dtype_notes(torch.device("cuda"), torch.bfloat16) == []
