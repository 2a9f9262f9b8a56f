"""The training loop: one object owning everything a checkpoint must restore."""
from __future__ import annotations

import logging
import math
import random
import time
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
from ..optim.param_groups import agc_parameters
from ..errors import CheckpointError
from .run_state import (load_checkpoint, read_model_config, rng_state, save_checkpoint, set_rng_state,
                        write_model_config)
from .config import TrainConfig
from .ema import TF1WarmupEma
from .metrics_log import MetricsLog, MetricsPlot, read_metrics
from .sgd import build_optimizer, build_scheduler, clip_gradients
from .precision import autocast_dtype, cast_forward
from .steps import StepBatchSampler, total_steps, warmup_steps

__all__ = ["Trainer", "CHECKPOINT_NAME", "PLOT_NAME", "RESUME_HONOURS"]

CHECKPOINT_NAME = "last.pth"
PLOT_NAME = "metrics.png"
_FORMAT = "nfzoo.train/2"  # 2: loads with weights_only=True; counts the metrics records

# The settings a resumed run may change: they steer the loop, not what a step computes. ``epochs``
# re-times the warmup-cosine schedule to the new length from the step reached; ``data_dir`` (the
# command line's) may move, its classes are checked against the checkpoint's. Any other change is
# refused: the checkpoint's optimizer, EMA and data position would silently keep the old values.
RESUME_HONOURS = frozenset({"epochs", "eval_every", "ckpt_every", "log_every", "progress", "plot", "num_workers",
                            "micro_batch", "stop_on_nonfinite", "output_dir", "resume", "data_dir"})
# model_config entries that must match for a checkpoint's weights to fit the model
_MODEL_IDENTITY = ("architecture", "num_classes", "in_chans", "label_names")


class _OneStepDecay(logging.Filter):
    """Drops timm's "Cosine annealing scheduler will have no effect" warning, which it gives for a
    cosine of ``t_initial`` 1 on the assumption that t counts epochs. The trainer counts steps: a
    decay of one step (a run one step longer than its warmup) ends at ``min_lr`` as it should.
    Warmups longer than the run, the usual cause, are refused by :class:`TrainConfig`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will have no effect" not in record.getMessage()


logging.getLogger("timm.scheduler.cosine_lr").addFilter(_OneStepDecay())


class Trainer:
    """Trains ``model`` on ``train_set`` with the recipe in ``cfg``; resumable at any step.

    A checkpoint (``<output_dir>/last.pth``, written atomically every ``ckpt_every`` steps and
    at every epoch end) holds the model, optimizer, scheduler, EMA, gradient scaler, every
    rank's random-number state and the data position (epoch, batch), so that a run killed at
    any moment and restarted with the same arguments continues exactly as if uninterrupted
    (bit-exact on CPU with ``num_workers=0``; with workers, random augmentations after a
    mid-epoch resume are drawn afresh).

    The checkpoint also holds the run's settings (``cfg`` and ``flags``): resuming with a setting
    outside :data:`RESUME_HONOURS` changed, or with another model, is refused with a
    :class:`~nfzoo.errors.CheckpointError` that names the differences.

    Args:
        on_step: called with the trainer after every step (and after that step's checkpoint).
        collate_fn: turns a list of training samples into ``(images, targets)``; targets may be
            class indices or class probabilities (MixUp/CutMix: :mod:`nfzoo.train.augment`). Its
            ``inputs_per_output`` attribute (1 if absent) is how many samples it receives per
            output: each step draws that many times the batch (:mod:`nfzoo.train.steps`).
        model_config: what a reader of the checkpoint needs to rebuild and evaluate the model
            (:data:`~nfzoo.train.run_state.MODEL_CONFIG_KEYS`); stored in every checkpoint and
            written to ``<output_dir>/model_config.json``.
        flags: settings of the run beyond ``cfg`` (the command line's), checked on resume like ``cfg``.
    """

    def __init__(self, model: nn.Module, train_set: Dataset, cfg: TrainConfig, eval_set: Dataset | None = None,
                 env: torchrun.Runtime | None = None, on_step: Callable[["Trainer"], None] | None = None,
                 collate_fn: Callable | None = None, model_config: dict | None = None, flags: dict | None = None):
        self.cfg = cfg
        self.model_config = model_config
        self.flags = dict(flags or {})
        self.env = env or torchrun.start()
        self.train_set, self.eval_set, self.on_step, self.collate_fn = train_set, eval_set, on_step, collate_fn
        self.model = model.to(self.env.device)
        self.net = DistributedDataParallel(self.model) if self.env.enabled else self.model
        self.ema = None if cfg.ema_decay is None else TF1WarmupEma(self.model, decay=cfg.ema_decay)
        self.sampler = StepBatchSampler(len(train_set), cfg.per_process_batch(self.env.world_size), cfg.seed,
                                        self.env.rank, self.env.world_size, getattr(collate_fn, "inputs_per_output", 1))
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps(cfg.epochs, len(train_set), cfg.batch_size),
                                         warmup_steps(cfg.warmup_epochs, len(train_set), cfg.batch_size))
        self.precision = cfg.precision_on(self.env.device)
        self.amp_dtype = autocast_dtype(self.precision)
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.agc_params = agc_parameters(self.model)
        self.agc_clip = cfg.agc_threshold()
        self.out = Path(cfg.output_dir)
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=self.env.is_main)
        self.plot = MetricsPlot(self.out / PLOT_NAME) if cfg.plot and self.env.is_main else None
        self.step = self.epoch = self.batch_in_epoch = 0
        self.diverged = False
        self._logged_at_checkpoint = 0
        self._seed_everything()
        if self.env.is_main:  # what killed checkpoint writes left behind
            remove_stale_temporaries(self.out / CHECKPOINT_NAME)
        resume = self.out / CHECKPOINT_NAME if cfg.resume == "auto" else cfg.resume
        if resume is not None and (cfg.resume != "auto" or Path(resume).is_file()):
            self.load_state_dict(load_checkpoint(resume), source=str(resume))
            self._say(f"resuming {self.out} at epoch {self.epoch + 1}, step {self.step}")
        # Records logged after the checkpoint (or by a run killed before its first) are logged again.
        self.log.keep_first(self._logged_at_checkpoint)
        if self.env.is_main and model_config is not None:
            write_model_config(model_config, self.out)
        if self.plot is not None and self.plot.unavailable:
            self._say(self.plot.unavailable)

    def _say(self, line: str) -> None:
        """Print ``line`` on the main process (what a run reports whatever ``progress`` says)."""
        if self.env.is_main:
            print(line, flush=True)

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
                logits = cast_forward(self.net, xc) if self.precision == "deepmind-bf16" else self.net(xc)
                loss = self.criterion(logits, yc) * (len(xc) / len(x))
            with sync:
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.agc_params, self.agc_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
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
            loss_sum, steps, started = torch.zeros((), device=self.env.device), 0, time.perf_counter()
            for x, y in bar:
                loss = self.train_step(x, y)
                loss_sum += loss
                steps += 1
                self.batch_in_epoch += 1
                if self.step % cfg.log_every == 0 or self.batch_in_epoch == self.sampler.batches_per_epoch():
                    self._log_train(loss, bar)
                if self.diverged:
                    break
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                if self.on_step is not None:
                    self.on_step(self)
            seconds = time.perf_counter() - started
            if self.diverged:
                self.save()
                break
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            evaluation = {}
            if self.eval_set is not None and cfg.eval_every and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
                last_eval = evaluation = self.evaluate()
                self.log.write({"step": self.step, "epoch": self.epoch, **last_eval})
            self._summarize_epoch(loss_sum, steps, seconds, evaluation)
            self.save()
        return {**last_eval, "diverged": self.diverged}

    def _summarize_epoch(self, loss_sum: torch.Tensor, steps: int, seconds: float, evaluation: dict) -> None:
        """One line per epoch (epoch, mean training loss, validation top-1, lr, images/s) and the plot."""
        if self.env.enabled:
            dist.all_reduce(loss_sum)
            loss_sum /= self.env.world_size
        parts = [f"epoch {self.epoch}/{self.cfg.epochs}", f"train loss {loss_sum.item() / max(steps, 1):.4f}"]
        if evaluation:
            ema = f" (EMA {evaluation['ema_eval_top1']:.2f}%)" if "ema_eval_top1" in evaluation else ""
            parts.append(f"val top-1 {evaluation['eval_top1']:.2f}%{ema}")
        parts += [f"lr {self.optimizer.param_groups[0]['lr']:.4g}",
                  f"{steps * self.cfg.batch_size / max(seconds, 1e-9):.0f} images/s"]
        self._say(", ".join(parts))
        if self.plot is not None:
            self.plot.draw(read_metrics(self.log.path))

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
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else {"module": self.ema.module.state_dict(),
                                                   "rounding_rng": self.ema._sr_generator.get_state()},
            "rng": self._gathered_rng(),
            "config": asdict(self.cfg),
            "flags": self.flags,
            "model_config": self.model_config,
            "metrics_records": self.log.records,
        }

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Continue from ``state`` (:meth:`state_dict`'s), after checking that it is this run's:
        the same model, process count and global batch, and no setting outside
        :data:`RESUME_HONOURS` changed. The schedule follows the current ``epochs``."""
        fresh = "start afresh with another --output-dir or --no-resume"
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{source} is not an nfzoo.train checkpoint (format {found!r}, expected "
                                  f"{_FORMAT!r}); move it away, or {fresh}")
        layout = (state["world_size"], state["batch_size"])
        if layout != (self.env.world_size, self.cfg.batch_size):
            raise CheckpointError(
                f"{source} was written by {layout[0]} process(es) with global batch {layout[1]}; resuming needs "
                f"the same (got {self.env.world_size}, {self.cfg.batch_size}) for the data position to mean the same; "
                f"resume with those, or {fresh}")
        self._check_same_model(state, source, fresh)
        changed = [f"--{name.replace('_', '-')} {_flag_text(old[name])} -> {_flag_text(new[name])}"
                   for old, new in ((state["config"], asdict(self.cfg)), (state.get("flags", {}), self.flags))
                   for name in old.keys() & new.keys() if name not in RESUME_HONOURS and old[name] != new[name]]
        if changed:
            raise CheckpointError(f"{source} was written with other settings ({', '.join(sorted(changed))}); rerun "
                                  f"with the checkpoint's values to resume, or {fresh}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"]["module"])
            self.ema._sr_generator.set_state(state["ema"]["rounding_rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.scheduler.step_update(self.step)  # the learning rate of the next step, on this run's schedule
        self.diverged = state["diverged"]
        self._logged_at_checkpoint = state["metrics_records"]
        set_rng_state(state["rng"][self.env.rank])

    def _check_same_model(self, state: dict, source: str, fresh: str) -> None:
        """Refuse the weights of another model (another architecture, class or channel count)."""
        saved = read_model_config(state)
        if saved is not None and self.model_config is not None:
            differ = [f"{k} {saved[k]!r} -> {self.model_config[k]!r}" for k in _MODEL_IDENTITY
                      if saved[k] != self.model_config[k]]
            if differ:
                raise CheckpointError(f"{source} holds another model ({'; '.join(differ)}); {fresh}")
        ours = self.model.state_dict()
        theirs = state["model"]
        differ = sorted(ours.keys() ^ theirs.keys()) or [k for k in ours if ours[k].shape != theirs[k].shape]
        if differ:
            k = differ[0]
            shapes = (f": {tuple(theirs[k].shape)} in the checkpoint, {tuple(ours[k].shape)} here"
                      if k in ours and k in theirs else " is in only one of them")
            raise CheckpointError(f"{source} holds another model's weights ({len(differ)} tensor(s) differ, e.g. "
                                  f"{k}{shapes}); {fresh}")

    def save(self) -> None:
        """Write ``<output_dir>/last.pth`` atomically (every rank takes part; the main one writes)."""
        state = self.state_dict()
        if self.env.is_main:
            save_checkpoint(state, self.out / CHECKPOINT_NAME)
        if self.env.enabled:
            dist.barrier()


def _flag_text(value) -> str:
    """A setting as it is written on the command line."""
    return "none" if value is None else str(value)
