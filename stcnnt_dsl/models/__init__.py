"""Torch modules built from model graphs: the backbone, and whole models with heads."""

from .backbone import Backbone, module_of
from .build import build
from .model import Model, head_module, model_of

__all__ = ["Backbone", "Model", "build", "head_module", "model_of", "module_of"]
