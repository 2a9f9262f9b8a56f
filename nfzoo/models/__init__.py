"""The zoo's model families; importing this package registers them with timm."""
from ._registry import REPLACED_TIMM_MODELS, ZOO_MODELS, register_zoo_model, zoo_name
from . import dm_nf_regnet, nf_resnet, nfnet, nfnet_mini
from .resnet_ws import ResNetWS, ResNetWSCfg, build_resnet_ws
