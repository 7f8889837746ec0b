from .config import ModelConfig
from .generate import generate
from .lm import build_model, count_params, xLSTMLM

__all__ = ["ModelConfig", "build_model", "count_params", "generate", "xLSTMLM"]
