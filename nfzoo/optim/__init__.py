"""The optimization rules of the NFNet recipe: adaptive gradient clipping (AGC) and which
parameters get weight decay and clipping (:mod:`nfzoo.optim.param_groups`)."""
from .agc import (DEEPMIND_BATCH, DEEPMIND_CLIP, AGCHook, adaptive_grad_clip_, attach_agc, attached_agc,
                  clip_for_batch)
from .param_groups import agc_exempt_names, agc_parameters, no_weight_decay_names, weight_decay_groups

__all__ = [
    "AGCHook", "attach_agc", "attached_agc", "adaptive_grad_clip_", "clip_for_batch", "DEEPMIND_BATCH", "DEEPMIND_CLIP",
    "agc_exempt_names", "agc_parameters", "no_weight_decay_names", "weight_decay_groups",
]
