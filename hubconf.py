"""torch.hub entry points: every nfzoo model, built through timm's factory.

    model = torch.hub.load("<owner>/nfzoo", "nfnet_f0", pretrained=True)
    torch.hub.list("<owner>/nfzoo"); print(torch.hub.help("<owner>/nfzoo", "nfnet_f0"))

Keyword arguments are passed to ``timm.create_model`` (``num_classes``, ``features_only``,
``pretrained_cfg_overlay=dict(file=...)`` ...).
"""
import inspect as _inspect

import nfzoo as _nfzoo
import timm as _timm
from nfzoo.weights import manifest as _manifest

dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors", "numpy"]


def _docstring(name: str) -> str:
    family_doc = _inspect.getdoc(_timm.models.model_entrypoint(name)) or ""
    tags = [c.tag for c in _manifest().values() if c.model == name]
    default = _timm.models.get_pretrained_cfg(name)
    weights = (f"Pretrained tags: {', '.join(tags)} (default {default.tag})." if tags and default
               else "No pretrained weights.")
    return (f"{family_doc}\n\n{weights}\n\n"
            f"Args:\n    pretrained: load the default pretrained weights (verified against the nfzoo manifest).\n"
            f"    **kwargs: passed to timm.create_model({name!r}, ...).")


def _entry_point(name: str):
    def entry_point(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = _docstring(name)
    return entry_point


globals().update({_name: _entry_point(_name) for _name in sorted(_nfzoo.ZOO_MODELS)})
