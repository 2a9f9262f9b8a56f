"""``python -m nfzoo.train.reproduce``: the papers' central claims at small scale on Fashion-MNIST.

1. Group Normalization (Wu & He 2018), Weight Standardization / BCN (Qiao et al. 2019): test error
   of a ResNet-8 with each ``norm`` choice when the normalizers see 64, 16, 4 or 2 images.
2. NFNets (Brock et al. 2021): an NF-ResNet at a large batch and high learning rates, without
   and with Adaptive Gradient Clipping at a few thresholds; which runs diverge.

Writes CSV, Markdown and PNG under ``--out`` (default docs/reproduction); a rerun after a kill
skips the runs already in the CSVs.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import torch

from .experiments import NORMS, ResultsFile, Setup, load_data, run_agc, run_norm
from .figures import agc_table, norm_table, plot_agc, plot_norms

__all__ = ["main", "Setup"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nfzoo.train.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    p.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-images", type=int, default=Setup.train_images)
    p.add_argument("--epochs", type=int, default=Setup.epochs)
    p.add_argument("--only", choices=("norms", "agc"), default=None, help="run one experiment")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (worker processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (1 is fastest on a shared machine)")
    return p


def _tasks(setup: Setup, only: str | None, norms_csv: ResultsFile, agc_csv: ResultsFile) -> list[tuple]:
    """The runs not yet in the CSVs, slowest (smallest micro-batch) first for load balance."""
    tasks = []
    if only in (None, "norms"):
        tasks += [("norms", dict(norm=n, micro_batch=b, seed=s))
                  for b in sorted(setup.micro_batches) for s in setup.seeds for n in setup.norms
                  if not norms_csv.done(norm=n, micro_batch=b, seed=s)]
    if only in (None, "agc"):
        tasks += [("agc", dict(lr=lr, clip=c, seed=s)) for s in setup.seeds for lr in setup.agc_lrs for c in setup.agc_clips
                  if not agc_csv.done(lr=lr, clip="none" if c is None else c, seed=s)]
    return tasks


_WORKER: dict = {}


def _init_worker(setup: Setup, data_dir: str | None, threads: int, work: str) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(setup=setup, data=load_data(setup, data_dir), work=Path(work))


def _run(task: tuple) -> tuple[str, dict]:
    kind, kw = task
    name = "-".join(str(v) for v in kw.values())
    run = run_norm if kind == "norms" else run_agc
    return kind, run(_WORKER["setup"], _WORKER["data"], **kw, work=_WORKER["work"] / f"{kind}-{name}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    setup = Setup(train_images=args.train_images, epochs=args.epochs, norms=tuple(args.norms), seeds=tuple(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    load_data(setup, args.data_dir)  # fail early, with the install hint, when Fashion-MNIST is missing
    csvs = {"norms": ResultsFile(args.out / "norms.csv"), "agc": ResultsFile(args.out / "agc.csv")}
    tasks = _tasks(setup, args.only, csvs["norms"], csvs["agc"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nfzoo-reproduce-") as work, ProcessPoolExecutor(
            args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(setup, args.data_dir, args.threads, work)) as pool:
        for future in as_completed([pool.submit(_run, t) for t in tasks]):
            kind, row = future.result()
            csvs[kind].add(row)
            print({k: v for k, v in row.items() if k != "losses"}, flush=True)
    if csvs["norms"].rows:
        (args.out / "norms.md").write_text(norm_table(csvs["norms"].rows, setup.norms, setup.micro_batches) + "\n")
        plot_norms(csvs["norms"].rows, setup.norms, setup.micro_batches, args.out / "norms.png")
    if csvs["agc"].rows:
        (args.out / "agc.md").write_text(agc_table(csvs["agc"].rows) + "\n")
        plot_agc(csvs["agc"].rows, args.out / "agc.png")
    meta = {"command": " ".join(["python -m nfzoo.train.reproduce", shlex.join(argv if argv is not None else sys.argv[1:])]).strip(),
            "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores shared with other jobs), "
                      f"{args.jobs} worker process(es) x {args.threads} torch thread(s)",
            "torch": torch.__version__, "wall_seconds_last_invocation": round(time.perf_counter() - started),
            "setup": asdict(setup)}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
