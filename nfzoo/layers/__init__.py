"""Layers of the zoo; each module's docstring names the paper it implements."""
from timm.layers import DropPath

from .activations import GAMMA, NONLINEARITIES, GammaAct
from .squeeze_excite import SqueezeExcite
from .std_conv import ScaledStdConv2d, WSConv1d, WSConv2d, WSConv3d

__all__ = [
    "DropPath", "GAMMA", "NONLINEARITIES", "GammaAct", "SqueezeExcite",
    "ScaledStdConv2d", "WSConv1d", "WSConv2d", "WSConv3d",
]
