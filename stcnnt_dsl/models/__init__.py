"""Torch modules built from model graphs: the backbone (and, with heads, whole models)."""

from .backbone import Backbone, module_of
from .build import build

__all__ = ["Backbone", "build", "module_of"]
