"""Fuzzing in the normal suite: every input loads or raises an STCNNTError, in time.

The strategies and the property live in tools/fuzz.py (which also runs long fuzz
campaigns); here each target runs a few hundred Hypothesis cases. With `pytest -s` the
module prints, per target, the cases run, the longest input that loaded and the slowest
case.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("stcnnt_fuzz", ROOT / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()
CASES = {"block": 300, "expression": 150, "yaml": 250, "dict": 200, "layers": 250}
STATS = {target: fuzz.Stats(target) for target in CASES}


@pytest.fixture(scope="module", autouse=True)
def _report():
    fuzz.warm_up()
    yield
    print("\nfuzz summary (cases per target, longest accepted input, slowest case):")
    for stats in STATS.values():
        print("  " + stats.line())


def _fuzz_test(target: str):
    @settings(max_examples=CASES[target], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(fuzz.STRATEGIES[target])
    def test(case: Any) -> None:
        fuzz.check_case(target, case, STATS[target])

    test.__name__ = f"test_fuzz_{target}"
    test.__doc__ = f"{CASES[target]} {target} cases: each loads or raises an STCNNTError."
    return test


test_fuzz_block = _fuzz_test("block")
test_fuzz_expression = _fuzz_test("expression")
test_fuzz_yaml = _fuzz_test("yaml")
test_fuzz_dict = _fuzz_test("dict")
test_fuzz_layers = _fuzz_test("layers")


def test_fuzz_targets_accept_some_inputs():
    """The generators are not all garbage: each target's cases reach the accepting
    paths too (runs after the fuzz tests above, in file order)."""
    for stats in STATS.values():
        if stats.cases:
            assert stats.accepted >= 1, stats.line()


def test_fuzz_tool_runs_a_budgeted_campaign():
    stats = fuzz.fuzz("block", cases=40, budget=30.0, first_seed=3)
    assert stats.cases >= 40 and stats.slowest < fuzz.TIME_LIMIT["block"]
