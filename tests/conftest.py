"""Shared test settings: deterministic, CPU-friendly, bounded Hypothesis runs.

Tests that bound how long something takes (a hostile input refused quickly, a parser
that stays linear) time it with `time.process_time()`: the CPU time of this process,
which other work on a shared machine does not stretch (wall-clock bounds failed on a
machine running several jobs at once)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from stcnnt_dsl.nn import tuning  # reads the environment when first asked, not at import

torch.set_num_threads(int(os.environ.get("STCNNT_TEST_THREADS", "2")))
# Tests run on the rules of stcnnt_dsl.nn.tuning (deterministic; nothing measured or
# written to the user's cache); tests/test_tuning.py covers the calibration.
os.environ.setdefault("STCNNT_CALIBRATE", "0")
# ... and on the same choices on every CPU (the rules differ between AVX2 and AVX-512
# machines), so that the suite's result does not depend on the CPU. A test whose result
# depends on a choice forces each choice itself (`forced`, `forcing`); STCNNT_TUNING set
# by hand runs the rest of the suite on other choices.
os.environ.setdefault("STCNNT_TUNING", "layout=channels_last,qkv=fused,attention=32")

# The default is reproducible: the README's test command and CI run the same examples.
# HYPOTHESIS_PROFILE=explore draws new examples each run (to hunt for bugs locally).
settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("default"))  # an older name
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a loaded machine OpenMP
    oversubscription made such tests several times slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@contextlib.contextmanager
def forcing(**values):
    """The per-machine choices (`nn.tuning`) set to `values` (the rest: `Choices()`'s
    defaults) inside the block; for module-scoped fixtures (tests use `forced`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tuning, "_active", tuning.Choices(**values, source="forced"))
        yield
    tuning.reset()


@pytest.fixture
def forced(monkeypatch):
    """Set the active per-machine choices (`nn.tuning`) for one test."""

    def use(**values):
        monkeypatch.setattr(tuning, "_active", tuning.Choices(**values, source="forced"))

    yield use
    tuning.reset()


@pytest.fixture(autouse=True)
def _registries_restored():
    """Names a test (or a documented example run in-process) registers are removed
    after it: a leaked norm changes every later message that lists the norms."""
    from stcnnt_dsl import registry

    tables = (registry.NORMS, registry.ACTIVATIONS, registry.TOPOLOGIES, registry.HEADS,
              registry.CELLS)  # fmt: skip
    before = [set(table) for table in tables]
    yield
    for table, names in zip(tables, before, strict=True):
        for name in set(table) - names:
            registry.unregister(name)
