"""Adaptive Gradient Clipping (Brock et al. 2021, "High-Performance Large-Scale Image Recognition
Without Normalization", arXiv 2102.06171, section 4.1).

For every unit ``i`` of a parameter ``W`` (an output channel: dim 0 of an OIHW conv weight or of
an (out, in) linear weight), with ``G`` its gradient::

    max_norm_i = clip * max(||W_i||, eps)                          # eps = 1e-3
    G_i <- G_i * max_norm_i / max(||G_i||, 1e-6)   if ||G_i|| > max_norm_i

A parameter with at most one dimension larger than one (a bias, a per-channel gain stored as
(out, 1, 1, 1), a scalar skip gain) is a single unit: its whole norm is used. This is DeepMind's
rule (their ``unitwise_norm`` squeezes the array and treats scalars and vectors as a whole); it
differs from timm's ``adaptive_clip_grad``, which clips a (out, 1, 1, 1) gain element by element.

Speed: timm's version allocates three full-size temporaries per parameter and launches about ten
kernels for each. Here the per-unit norms of the weights and of the gradients are read once each
(one ``torch._foreach_norm`` for all whole-tensor parameters, one reduction per matrix), the
clipping factors of every unit of every parameter are computed in a handful of kernels on one
concatenated vector, and only the gradients with a clipped unit are scaled in place, by one
``torch._foreach_mul_`` (knowing which costs one host sync): two to four passes over memory, no
temporaries the size of a parameter. Once training settles few units clip, and the third and
fourth passes mostly vanish.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from .param_groups import agc_exempt_names

__all__ = ["AGCHook", "attach_agc", "attached_agc", "adaptive_grad_clip_", "clip_for_batch", "DEEPMIND_BATCH", "DEEPMIND_CLIP"]

GRAD_NORM_FLOOR = 1e-6

# DeepMind's release trains every NFNet at a global batch of 4096 with clip 0.01
# (nfnets/experiment_nfnets.py). The paper's AGC section (Brock et al. 2021, arXiv 2102.06171)
# recommends 0.01 for batches of 1024 to 4096 and finds that larger batches need a smaller
# threshold, without giving one; at smaller batches clipping matters less.
DEEPMIND_BATCH = 4096
DEEPMIND_CLIP = 0.01


def clip_for_batch(global_batch: int) -> float:
    """The AGC threshold for a global batch: 0.01 up to 4096 images. Above that the published
    sources give no value, only that it must be smaller, so a larger batch is refused: choose
    the threshold yourself."""
    if global_batch < 1:
        raise ValueError(f"the global batch must be positive, got {global_batch}")
    if global_batch > DEEPMIND_BATCH:
        raise ValueError(
            f"no published AGC threshold for a global batch of {global_batch}: the NFNet paper uses "
            f"{DEEPMIND_CLIP} up to {DEEPMIND_BATCH} and finds that larger batches need a smaller one. "
            f"Set it explicitly (e.g. --agc-clip 0.005), or use a global batch of at most {DEEPMIND_BATCH}.")
    return DEEPMIND_CLIP


def _is_unitwise(t: torch.Tensor) -> bool:
    """True when ``t`` has units of its own along dim 0 (more than one non-singleton dim)."""
    return sum(s > 1 for s in t.shape) > 1


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this process holds: a DTensor's local shard (a view), else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def _cross_shard_groups(t: torch.Tensor, unitwise: bool) -> tuple[dist.ProcessGroup, ...]:
    """The process groups over which a norm of ``t`` must be summed: the mesh dimensions that
    shard a dim the norm reduces over. FSDP2 shards dim 0, the unit dim, so the unit norms of a
    weight are local, while the whole-tensor norm of a gain, bias or skip gain is not."""
    if not isinstance(t, DTensor):
        return ()
    groups = []
    for mesh_dim, placement in enumerate(t.placements):
        if placement.is_partial():
            raise ValueError("adaptive_grad_clip_ needs reduced gradients, got a DTensor with a Partial placement")
        if placement.is_shard() and not (unitwise and placement.dim == 0):
            groups.append(t.device_mesh.get_group(mesh_dim))
    return tuple(groups)


def _norm_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a norm of ``t`` is computed in: float32, or float64 for a float64 tensor."""
    return torch.promote_types(t.dtype, torch.float32)


def _unit_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of every unit of every tensor, concatenated in order (this process's units: for a
    DTensor, those of its local shard, norms summed across the shards they span); in float32, or
    in float64 when a tensor is float64.

    A unit-wise tensor (judged by its global shape) contributes one norm per unit it holds,
    any other tensor one.
    """
    unitwise = [_is_unitwise(t) for t in tensors]
    local = [_local(t) for t in tensors]
    norms: list[torch.Tensor | None] = [None] * len(tensors)
    whole_by_dtype: dict[torch.dtype, list[int]] = {}
    for i, u in enumerate(unitwise):
        if not u:
            whole_by_dtype.setdefault(_norm_dtype(local[i]), []).append(i)
    for dtype, whole in whole_by_dtype.items():
        for i, n in zip(whole, torch._foreach_norm([local[i] for i in whole], 2, dtype=dtype)):
            norms[i] = n.view(1)
    for i, t in enumerate(local):
        if norms[i] is None:
            norms[i] = torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=_norm_dtype(t))
    by_groups: dict[tuple, list[int]] = {}
    for i, (t, u) in enumerate(zip(tensors, unitwise)):
        groups = _cross_shard_groups(t, u)
        if groups:
            by_groups.setdefault(groups, []).append(i)
    for groups, indices in by_groups.items():  # one all-reduce of squared norms per set of groups
        squares = torch.cat([norms[i] for i in indices]).square_()
        for group in groups:
            dist.all_reduce(squares, group=group)
        for i, n in zip(indices, squares.sqrt_().split([len(norms[i]) for i in indices])):
            norms[i] = n
    return torch.cat(norms)  # type: ignore[arg-type]  (float64 if any norm is)


def _check_clip(clip: float, eps: float) -> None:
    """Refuse a threshold or floor that is not a finite positive number (a NaN would clip nothing)."""
    if not (math.isfinite(clip) and math.isfinite(eps) and clip > 0 and eps > 0):
        raise ValueError(f"clip and eps must be finite positive numbers, got clip={clip}, eps={eps}: "
                         f"use the published clip {DEEPMIND_CLIP} (see clip_for_batch) and eps 1e-3")


@torch.no_grad()
def adaptive_grad_clip_(parameters: Iterable[torch.Tensor], clip: float = 0.01, eps: float = 1e-3) -> None:
    """Clip the ``.grad`` of ``parameters`` in place, unit-wise, as the NFNet paper's AGC.

    Parameters without a gradient are skipped. Call it on *unscaled* gradients (after
    ``GradScaler.unscale_``) and, under DDP, after backward (the gradients are then all-reduced).
    Nothing is excluded here: pass only the parameters to clip
    (:func:`nfzoo.optim.param_groups.agc_parameters`), or attach it to an optimizer with
    :func:`attach_agc`, which does it.
    """
    _check_clip(clip, eps)
    params = [p for p in parameters if p.grad is not None]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in params:
        if p.grad.is_sparse:
            raise ValueError("adaptive_grad_clip_ does not support sparse gradients")
        by_device.setdefault(p.grad.device, []).append(p)
    for group in by_device.values():
        max_norm = _unit_norms([p.detach() for p in group]).clamp_(min=eps).mul_(clip)
        grad_norm = _unit_norms([p.grad for p in group])
        clipped = grad_norm > max_norm
        factor = torch.where(clipped, max_norm / grad_norm.clamp_(min=GRAD_NORM_FLOOR), 1.0)
        grads = [_local(p.grad) for p in group]
        sizes = [g.shape[0] if _is_unitwise(p) else 1 for g, p in zip(grads, group)]
        # which tensors have a clipped unit: one host sync, and only those are rewritten
        owner = torch.repeat_interleave(torch.arange(len(grads), device=factor.device),
                                        torch.tensor(sizes, device=factor.device))
        touched = torch.zeros(len(grads), device=factor.device).index_add_(0, owner, clipped.float()).bool().tolist()
        scaled = [(g, f.view((-1,) + (1,) * (g.dim() - 1)) if _is_unitwise(p) else f.view(()))
                  for g, p, f, t in zip(grads, group, factor.split(sizes), touched) if t]
        if scaled:
            torch._foreach_mul_([g for g, _ in scaled], [f.to(g.dtype) for g, f in scaled])


class AGCHook:
    """Adaptive gradient clipping attached to an optimizer: made by :func:`attach_agc`, which
    explains what it does. ``remove()`` detaches it."""

    def __init__(self, optimizer: Optimizer, clip: float, eps: float, excluded: list[torch.Tensor]):
        self.clip, self.eps = clip, eps
        self._excluded = {id(p) for p in excluded}
        self.optimizer = optimizer
        # GradScaler unscales in the fused step itself for an optimizer that advertises it, which
        # is after this hook: attached, the optimizer is unscaled before its step, as any other
        self._fused_scaling = optimizer.__dict__.pop("_step_supports_amp_scaling", None)
        self._handle = optimizer.register_step_pre_hook(self._clip)
        _ATTACHED[optimizer] = weakref.ref(self)  # weak both ways: the registry keeps nothing alive

    def clipped_parameters(self) -> list[torch.Tensor]:
        """What each step clips: every parameter of every group of the optimizer but the excluded."""
        return [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in self._excluded]

    def _clip(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        adaptive_grad_clip_(self.clipped_parameters(), self.clip, self.eps)

    def remove(self) -> None:
        """Detach: the optimizer steps without clipping, as before :func:`attach_agc`."""
        self._handle.remove()
        _ATTACHED.pop(self.optimizer, None)
        if self._fused_scaling is not None:
            self.optimizer._step_supports_amp_scaling = self._fused_scaling

    def __repr__(self) -> str:
        return f"AGCHook(clip={self.clip}, eps={self.eps}, excluded={len(self._excluded)} params)"


_ATTACHED: weakref.WeakKeyDictionary[Optimizer, weakref.ref[AGCHook]] = weakref.WeakKeyDictionary()


def attach_agc(
    optimizer: Optimizer,
    model: nn.Module | None = None,
    *,
    clip: float = 0.01,
    eps: float = 1e-3,
    exclude: Iterable[torch.Tensor] = (),
) -> AGCHook:
    """Make every ``optimizer.step()`` first clip the gradients (:func:`adaptive_grad_clip_`), by a
    step pre-hook (``Optimizer.register_step_pre_hook``); returns the hook (``remove()`` detaches it).

    The optimizer stays itself: LR schedulers, timm's schedulers, ``add_param_group`` (its
    parameters are clipped too), ``state_dict()`` / ``load_state_dict()`` and checkpoints are
    those of the bare optimizer.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (SGD, AdamW, LAMB, ...), at most one AGC each.
        model: when given, its classifier's weight (``head.fc.weight`` for NFNets) is not
            clipped, as in DeepMind's recipe (:mod:`nfzoo.optim.param_groups`; the bias is).
        clip: the clipping threshold lambda; see :func:`clip_for_batch` for the published value
            per global batch.
        eps: floor on the weight's unit norm (1e-3), so that zero-initialised weights can move.
        exclude: further parameters not to clip.

    Order with AMP (``torch.amp.GradScaler``)::

        scaler.scale(loss).backward()
        scaler.step(opt)   # unscales the grads, skips the step on inf/NaN, else calls opt.step(),
                           # whose hook clips the *unscaled* grads before the update
        scaler.update()

    A fused optimizer (``fused=True``) would unscale inside its step, after the hook; attaching
    turns that off on this optimizer (``remove()`` turns it back on), so the scaler unscales
    before the step, as for any other. A closure passed to ``step`` is evaluated by the
    optimizer after the hook: its gradients are not clipped, so use AGC without closures.

    Under DDP the clip runs at step time, after backward, on the all-reduced gradients, so every
    replica clips identically. Under FSDP2 (``torch.distributed.fsdp.fully_shard``) parameters and
    gradients are DTensors sharded on dim 0: each process clips its own shard, unit norms stay
    local, and whole-tensor norms (gains, biases, skip gains) are summed across the shards, so the
    result is the unsharded one (every process must call ``step``). Flat parameters (FSDP1
    ``use_orig_params=False``, ZeRO) are not supported: their units are split across ranks.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"attach_agc takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if optimizer in _ATTACHED:
        raise ValueError("this optimizer already has AGC attached: remove() its hook (attached_agc(optimizer)) "
                         "before attaching another")
    _check_clip(clip, eps)
    excluded = list(exclude)
    if model is not None:
        params = dict(model.named_parameters())
        excluded += [params[name] for name in sorted(agc_exempt_names(model))]
    return AGCHook(optimizer, clip, eps, excluded)


def attached_agc(optimizer: Optimizer) -> AGCHook | None:
    """The AGC :func:`attach_agc` attached to ``optimizer``, or None."""
    hook = _ATTACHED.get(optimizer)
    return hook() if hook is not None else None
