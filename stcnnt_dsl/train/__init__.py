"""Training from a recipe: `stcnnt_dsl.train(recipe, out=None, resume=False)` and
`stcnnt train RECIPE` (extra `[train]`: MONAI, PEFT, tqdm; TensorBoard optional).

The package is also the function: `stcnnt_dsl.train("recipe.yaml", out="runs/a")` trains,
and `stcnnt_dsl.train.load_recipe`, `stcnnt_dsl.train.Recipe` ... are its parts:
`recipe` (the YAML format), `data` (patches and held-out cases on `stcnnt_dsl.data`),
`model` (spec, starting weights, adaptation), `losses`, `state` (checkpoints), `engine`
(the loop, one process or many under torchrun).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .engine import TrainResult, train
from .recipe import Recipe, RecipeSource, dump_recipe, load_recipe, recipe_json_schema

__all__ = [
    "Recipe",
    "RecipeSource",
    "TrainResult",
    "dump_recipe",
    "load_recipe",
    "recipe_json_schema",
    "train",
]


class _CallableModule(types.ModuleType):
    """`stcnnt_dsl.train` is the package and, called, the function `train` (importing
    the package makes it the parent's attribute, so both must work)."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
