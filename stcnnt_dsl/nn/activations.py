"""The values of the `activation` option as torch modules: one table, by name, of the
module factory and the oneDNN post-op that computes the same function inside a
convolution (`functional.fused_conv2d`, eval-mode CPU inference).

The names and their help live with the language's vocabulary
(`stcnnt_dsl.registry.BUILTIN_ACTIVATIONS`, torch-free); tests/test_nn_semantics.py
checks both tables name the same activations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import SpecError
from ..registry import ACTIVATIONS

__all__ = ["BUILTIN", "Activation", "make_activation", "onednn_unary"]

# (oneDNN attr, scalars, algorithm) of mkldnn::_convolution_pointwise
OneDNNUnary = tuple[str, list[float], str | None]


@dataclass(frozen=True)
class Activation:
    make: Callable[[], nn.Module]
    onednn: OneDNNUnary | None = None  # None: not fusable into a convolution


BUILTIN: dict[str, Activation] = {
    "gelu": Activation(nn.GELU, ("gelu", [], "none")),
    "gelu_tanh": Activation(lambda: nn.GELU(approximate="tanh"), ("gelu", [], "tanh")),
    # fused as a leaky ReLU whose slope is the learned weight (see `Mixer.add_into`)
    "prelu": Activation(lambda: nn.PReLU(num_parameters=1, init=0.25)),
    "relu": Activation(nn.ReLU, ("relu", [], None)),
    "relu6": Activation(nn.ReLU6, ("hardtanh", [0.0, 6.0], None)),
    "leaky_relu": Activation(lambda: nn.LeakyReLU(0.1), ("leaky_relu", [0.1], None)),
    "silu": Activation(nn.SiLU, ("swish", [], None)),
    "elu": Activation(nn.ELU),
    "selu": Activation(nn.SELU),
    "celu": Activation(nn.CELU),
    "tanh": Activation(nn.Tanh, ("tanh", [], None)),
    "identity": Activation(nn.Identity, ("none", [], None)),
}


def make_activation(name: str) -> nn.Module:
    """The activation called `name` (see the `activation` option; registered ones via
    `stcnnt_dsl.register_activation`)."""
    component = ACTIVATIONS.get(name)
    if component is not None and component.factory is not None:
        return component.factory()
    if name not in BUILTIN:
        raise SpecError(
            f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)} (or register "
            "it with stcnnt_dsl.register_activation)",
            "activation",
        )
    return BUILTIN[name].make()


def onednn_unary(name: str) -> OneDNNUnary | None:
    """The oneDNN post-op of a built-in activation (None: registered or not fusable)."""
    component = ACTIVATIONS.get(name)
    if component is not None and component.factory is not None:
        return None
    entry = BUILTIN.get(name)
    return None if entry is None else entry.onednn
