"""Planning: from a data set and a memory budget to an architecture, a patch, a batch
and a training recipe (`stcnnt plan`), with the training step's peak predicted from the
model graph (`memory`), nnU-Net's rules written for ST-CNNT (`rules`), the fit of patch
and batch (`fit`, also `plan_for_spec` for the studio) and a multi-objective search
(`search`, Optuna)."""

from .fit import SpecFit, plan_for_spec
from .memory import MemoryEstimate, parse_memory, step_memory
from .plan import Plan, plan

__all__ = [
    "MemoryEstimate",
    "Plan",
    "SpecFit",
    "parse_memory",
    "plan",
    "plan_for_spec",
    "step_memory",
]
