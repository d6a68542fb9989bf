"""Compiled backbones: U-Net, HR-Net and the LLM-style stack."""

from .base import Backbone
from .hrnet import HRNet
from .llm import LLMStack
from .unet import UNet

BACKBONES = {"unet": UNet, "hrnet": HRNet, "llm": LLMStack}

__all__ = ["BACKBONES", "Backbone", "HRNet", "LLMStack", "UNet"]
