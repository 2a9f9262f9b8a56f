"""The training loop: one object owning everything a checkpoint must restore."""
from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import torchrun
from ..atomic_files import remove_stale_temporaries
from ..layers.ablation_norms import clamp_gates_
from ..optim.param_groups import agc_parameters
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import ResumableBatchSampler
from .ema import TF1WarmupEma
from .metrics_log import MetricsLog
from .optimizer import build_optimizer, build_scheduler, clip_gradients

__all__ = ["Trainer", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "last.pth"
_FORMAT = "nfzoo.train/2"  # 2: loads with weights_only=True; counts the metrics records


class Trainer:
    """Trains ``model`` on ``train_set`` with the recipe in ``cfg``; resumable at any step.

    A checkpoint (``<output_dir>/last.pth``, written atomically every ``ckpt_every`` steps and
    at every epoch end) holds the model, optimizer, scheduler, EMA, gradient scaler, every
    rank's random-number state and the data position (epoch, batch), so that a run killed at
    any moment and restarted with the same arguments continues exactly as if uninterrupted
    (bit-exact on CPU with ``num_workers=0``; with workers, random augmentations after a
    mid-epoch resume are drawn afresh).

    Args:
        on_step: called with the trainer after every step (and after that step's checkpoint).
        collate_fn: turns a list of training samples into ``(images, targets)``; targets may be
            class indices or class probabilities (MixUp/CutMix: :mod:`nfzoo.train.augment`).
    """

    def __init__(self, model: nn.Module, train_set: Dataset, cfg: TrainConfig, eval_set: Dataset | None = None,
                 env: torchrun.Runtime | None = None, on_step: Callable[["Trainer"], None] | None = None,
                 collate_fn: Callable | None = None):
        self.cfg = cfg
        self.env = env or torchrun.start()
        self.train_set, self.eval_set, self.on_step, self.collate_fn = train_set, eval_set, on_step, collate_fn
        self.model = model.to(self.env.device)
        self.net = DistributedDataParallel(self.model) if self.env.enabled else self.model
        self.ema = TF1WarmupEma(self.model, decay=cfg.ema_decay) if cfg.ema_decay else None
        self.sampler = ResumableBatchSampler(len(train_set), cfg.per_process_batch(self.env.world_size), cfg.seed,
                                             self.env.rank, self.env.world_size)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.sampler.batches_per_epoch())
        self.amp_dtype = cfg.amp_dtype(self.env.device)
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.agc_params = agc_parameters(self.model)
        self.agc_clip = cfg.agc_threshold()
        self.out = Path(cfg.output_dir)
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=self.env.is_main)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.diverged = False
        self._logged_at_checkpoint = 0
        self._seed_everything()
        if self.env.is_main:  # what killed checkpoint writes left behind
            remove_stale_temporaries(self.out / CHECKPOINT_NAME)
        resume = self.out / CHECKPOINT_NAME if cfg.resume == "auto" else cfg.resume
        if resume is not None and (cfg.resume != "auto" or Path(resume).is_file()):
            self.load_state_dict(load_checkpoint(resume))
        # Records logged after the checkpoint (or by a run killed before its first) are logged again.
        self.log.keep_first(self._logged_at_checkpoint)

    # -- one step ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, backward (over micro-batches if ``cfg.micro_batch``), AGC, optimizer and schedule
        update, EMA; returns the (detached) mean loss of the batch."""
        x = x.to(self.env.device, non_blocking=True)
        y = y.to(self.env.device, non_blocking=True)
        chunks = list(zip(x.split(self.cfg.micro_batch or len(x)), y.split(self.cfg.micro_batch or len(x))))
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.env.device)
        for i, (xc, yc) in enumerate(chunks):
            # Gradients are all-reduced across ranks only on the last micro-batch.
            sync = nullcontext() if i == len(chunks) - 1 or not self.env.enabled else self.net.no_sync()
            with sync, torch.autocast(self.env.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = self.criterion(self.net(xc), yc) * (len(xc) / len(x))
            with sync:
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.agc_params, self.agc_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        clamp_gates_(self.model)
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return total

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``cfg.epochs`` (from wherever a resumed checkpoint left off); returns the last
        evaluation (or ``{}``) plus ``diverged``."""
        cfg, last_eval = self.cfg, {}
        while self.epoch < cfg.epochs and not self.diverged:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            self.model.train()
            bar = tqdm(self._loader(self.train_set, self.sampler, self.collate_fn), total=len(self.sampler), leave=False,
                       desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and self.env.is_main))
            for x, y in bar:
                loss = self.train_step(x, y)
                self.batch_in_epoch += 1
                if self.step % cfg.log_every == 0 or self.batch_in_epoch == self.sampler.batches_per_epoch():
                    self._log_train(loss, bar)
                if self.diverged:
                    break
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                if self.on_step is not None:
                    self.on_step(self)
            if self.diverged:
                self.save()
                break
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if self.eval_set is not None and cfg.eval_every and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
                last_eval = self.evaluate()
                self.log.write({"step": self.step, "epoch": self.epoch, **last_eval})
            self.save()
        return {**last_eval, "diverged": self.diverged}

    def _log_train(self, loss: torch.Tensor, bar: tqdm) -> None:
        if self.env.enabled:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        value = loss.item()
        lr = self.optimizer.param_groups[0]["lr"]
        self.diverged = self.cfg.stop_on_nonfinite and not math.isfinite(value)
        self.log.write({"step": self.step, "epoch": self.epoch + self.batch_in_epoch / self.sampler.batches_per_epoch(),
                        "train_loss": value, "lr": lr, **({"diverged": True} if self.diverged else {})})
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Top-1 error and loss on ``eval_set`` (of the EMA weights too, when there is an EMA)."""
        results = self._evaluate(self.model, "eval")
        if self.ema is not None:
            results.update(self._evaluate(self.ema.module, "ema_eval"))
        return results

    def _evaluate(self, model: nn.Module, prefix: str) -> dict:
        was_training = model.training
        model.eval()
        indices = list(range(self.env.rank, len(self.eval_set), self.env.world_size))
        step = self.sampler.batch_size
        batches = [indices[i:i + step] for i in range(0, len(indices), step)]
        totals = torch.zeros(3, dtype=torch.float64, device=self.env.device)  # loss sum, correct, count
        for x, y in self._loader(self.eval_set, batches):
            x, y = x.to(self.env.device), y.to(self.env.device)
            with torch.autocast(self.env.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = model(x)
            totals += torch.stack([nn.functional.cross_entropy(logits.float(), y, reduction="sum").double(),
                                   (logits.argmax(1) == y).sum().double(), torch.tensor(len(y), dtype=torch.float64)])
        if self.env.enabled:
            dist.all_reduce(totals)
        model.train(was_training)
        loss, correct, count = totals.tolist()
        return {f"{prefix}_loss": loss / count, f"{prefix}_top1": 100 * correct / count,
                f"{prefix}_error": 100 * (1 - correct / count)}

    def _loader(self, dataset: Dataset, batch_sampler, collate_fn: Callable | None = None) -> DataLoader:
        # A private generator: creating the loader's iterator must not draw from the global RNG,
        # or a resumed run's random stream would differ from an uninterrupted one.
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.cfg.num_workers,
                          pin_memory=self.env.device.type == "cuda", generator=generator, collate_fn=collate_fn)

    # -- state ------------------------------------------------------------------------------
    def _seed_everything(self) -> None:
        seed = self.cfg.seed + self.env.rank  # ranks draw different dropout / drop-path masks
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _gathered_rng(self) -> list[dict]:
        states = [rng_state()]
        if self.env.enabled:
            gathered = [None] * self.env.world_size
            dist.all_gather_object(gathered, states[0])
            states = gathered
        return states

    def state_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "diverged": self.diverged,
            "world_size": self.env.world_size, "batch_size": self.cfg.batch_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else {"module": self.ema.module.state_dict(),
                                                   "rounding_rng": self.ema._sr_generator.get_state()},
            "rng": self._gathered_rng(),
            "config": asdict(self.cfg),
            "metrics_records": self.log.records,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != _FORMAT:
            raise ValueError(f"not an nfzoo.train checkpoint (format {state.get('format')!r}, expected {_FORMAT!r})")
        layout = (state["world_size"], state["batch_size"])
        if layout != (self.env.world_size, self.cfg.batch_size):
            raise ValueError(
                f"the checkpoint was written by {layout[0]} process(es) with global batch {layout[1]}; resuming needs "
                f"the same (got {self.env.world_size}, {self.cfg.batch_size}) for the data position to mean the same")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError("the checkpoint has no EMA weights but this run keeps an EMA (ema_decay)")
            self.ema.module.load_state_dict(state["ema"]["module"])
            self.ema._sr_generator.set_state(state["ema"]["rounding_rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.diverged = state["diverged"]
        self._logged_at_checkpoint = state["metrics_records"]
        set_rng_state(state["rng"][self.env.rank])

    def save(self) -> None:
        """Write ``<output_dir>/last.pth`` atomically (every rank takes part; the main one writes)."""
        state = self.state_dict()
        if self.env.is_main:
            save_checkpoint(state, self.out / CHECKPOINT_NAME)
        if self.env.enabled:
            dist.barrier()
