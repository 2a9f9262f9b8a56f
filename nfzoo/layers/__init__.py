"""Layers of the zoo; each module's docstring names the paper it implements."""
from timm.layers import DropPath

from .activations import GAMMA, NONLINEARITIES, GammaAct
from .bcn import BatchChannelNorm2d, EstimatedBatchNorm2d, SyncedBatchNorm2d
from .norm_by_name import NORMS, NormChoice, get_norm, register_norm
from .squeeze_excite import SqueezeExcite
from .std_conv import ScaledStdConv2d, WSConv1d, WSConv2d, WSConv3d

__all__ = [
    "BatchChannelNorm2d", "EstimatedBatchNorm2d", "SyncedBatchNorm2d",
    "NORMS", "NormChoice", "get_norm", "register_norm",
    "DropPath", "GAMMA", "NONLINEARITIES", "GammaAct", "SqueezeExcite",
    "ScaledStdConv2d", "WSConv1d", "WSConv2d", "WSConv3d",
]
