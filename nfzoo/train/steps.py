"""How many steps a run takes and which images each step draws, as in DeepMind's NFNet
experiment (``nfnets/experiment_nfnets.py``, ``nfnets/dataset.py``).

DeepMind counts an epoch as ``num_images / batch_size`` steps of the global batch, unrounded:
a run is ``epochs * num_images // batch_size`` steps and its warmup ``warmup_epochs *
(num_images / batch_size)`` steps, fractional (F0: 112,602 and 1,563.9). The images come from a
repeating shuffled stream with no epoch boundaries; with MixUp or CutMix a step of B outputs
draws 2B images from it (``dataset.py`` batches ``2 * batch_size`` before mixing).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["total_steps", "warmup_steps", "StepBatchSampler"]


def total_steps(epochs: int, num_images: int, batch_size: int) -> int:
    """``experiment_nfnets.py``'s ``training_steps``: ``num_images * epochs // batch_size``."""
    return num_images * epochs // batch_size


def warmup_steps(warmup_epochs: float, num_images: int, batch_size: int) -> float:
    """``5 * steps_per_epoch`` in ``experiment_nfnets.py``, with ``steps_per_epoch = num_images /
    batch_size`` unrounded."""
    return warmup_epochs * (num_images / batch_size)


class StepBatchSampler(Sampler[list[int]]):
    """Each step's image indices for one process, from an endless stream of permutations.

    The stream is the permutations of the ``num_samples`` indices drawn from ``seed``,
    ``seed + 1``, ... one after another. Step ``s`` takes the next ``draws_per_step = batch_size x
    images_per_output x world_size`` indices of it, and rank r every world_size-th of those
    (starting at r): ``batch_size`` is each process's number of outputs, ``images_per_output``
    the raw images the collate function mixes into one output (2 with MixUp/CutMix).

    Steps are grouped into epochs of DeepMind's length, ``(e + 1) * num_samples // B - e *
    num_samples // B`` steps for epoch e with B the global batch, so that ``epochs`` of them make
    :func:`total_steps`. ``set_epoch(epoch, start_batch)`` positions the sampler at any step: the
    data position a checkpoint records is (epoch, batch).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 images_per_output: int = 1):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.images_per_output = images_per_output
        self.epoch = 0
        self.start_batch = 0
        self._permutations: dict[int, torch.Tensor] = {}
        if self._first_step(1) == 0:
            raise ValueError(f"{num_samples} samples make no full step of {batch_size} x {world_size} outputs; "
                             "lower the batch size or use more data")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _first_step(self, epoch: int) -> int:
        return epoch * self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def batches_per_epoch(self) -> int:
        """The steps of the current epoch."""
        return self._first_step(self.epoch + 1) - self._first_step(self.epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def _permutation(self, k: int) -> torch.Tensor:
        if k not in self._permutations:
            self._permutations = {j: p for j, p in self._permutations.items() if j >= k - 1}
            self._permutations[k] = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + k))
        return self._permutations[k]

    def _stream(self, start: int, count: int) -> torch.Tensor:
        """Positions [start, start + count) of the stream."""
        parts, end = [], start + count
        while start < end:
            k, offset = divmod(start, self.num_samples)
            take = min(end - start, self.num_samples - offset)
            parts.append(self._permutation(k)[offset:offset + take])
            start += take
        return torch.cat(parts)

    def __iter__(self) -> Iterator[list[int]]:
        draws = self.global_batch * self.images_per_output
        first = self._first_step(self.epoch)
        for step in range(first + self.start_batch, self._first_step(self.epoch + 1)):
            yield self._stream(step * draws, draws)[self.rank::self.world_size].tolist()
