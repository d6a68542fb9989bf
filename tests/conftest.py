"""Shared test settings: deterministic, CPU-friendly, bounded Hypothesis runs."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from stcnnt_dsl.nn import tuning  # reads the environment when first asked, not at import

torch.set_num_threads(int(os.environ.get("STCNNT_TEST_THREADS", "2")))
# Tests run on the rules of stcnnt_dsl.nn.tuning (deterministic; nothing measured or
# written to the user's cache); tests/test_tuning.py covers the calibration.
os.environ.setdefault("STCNNT_CALIBRATE", "0")

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


@pytest.fixture
def forced(monkeypatch):
    """Set the active per-machine choices (`nn.tuning`) for one test."""

    def use(**values):
        monkeypatch.setattr(tuning, "_active", tuning.Choices(**values, source="forced"))

    yield use
    tuning.reset()
