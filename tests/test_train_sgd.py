"""nfzoo.train.sgd: the recipe's gradient clipping uses AGC's eps of 1e-3."""
import torch

from nfzoo.train.sgd import clip_gradients
from test_optim_agc import CLIP, _unit_norms, _zero_weight_with_gradient


def test_the_training_recipe_clips_with_eps_1e_3():
    p = _zero_weight_with_gradient()
    clip_gradients([p], CLIP)
    torch.testing.assert_close(_unit_norms(p.grad), torch.full((3,), CLIP * 1e-3), rtol=1e-6, atol=0)
