"""nfzoo: a timm plugin and model zoo for CNNs that train without batch-size-dependent
normalization. ``import nfzoo`` registers every zoo model with timm's factory."""
from . import layers, models, optim
from .fuse import fuse
from .models import REPLACED_TIMM_MODELS, ZOO_MODELS

__version__ = "0.1.0"
