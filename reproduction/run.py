"""``python -m reproduction``: the papers' central claims on Fashion-MNIST (docs/reproduction.md).

1. Group Normalization (Wu & He 2018), Weight Standardization / BCN (Qiao et al. 2019), Batch
   Renormalization (Ioffe 2017): test error of a small ResNet with each ``norm`` when its
   normalizers see 32, 16, 8, 4 or 2 images per (simulated) GPU, at a fixed optimizer batch.
2. NF-ResNets and NFNets (Brock et al. 2021): the normalizer-free twin of that ResNet, with and
   without Adaptive Gradient Clipping, against the batch-normalized one over global batch x
   learning rate x clipping threshold.

Writes CSV, Markdown and PNG under ``--out`` (default docs/reproduction) and ``meta.json``
(command, device, time, seeds). Runs checkpoint under ``--work``: a rerun after a kill resumes
the unfinished runs where they stopped and skips those already in the CSVs.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from nfzoo.atomic_files import write_atomic
from nfzoo.cli import ArgumentParser, device, existing_dir, non_negative_int, output_dir, positive_int, run_cli
from nfzoo.machine import device_name

from .experiments import NORMS, ResultsFile, Setup, agc_tasks, load_data, norm_tasks, remove_run, run_agc, run_norm
from .figures import agc_table, norm_table, plot_agc, plot_norms

__all__ = ["PROG", "main"]

PROG = "python -m reproduction"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=output_dir, default=Path("docs/reproduction"), help="results folder")
    p.add_argument("--work", type=output_dir, default=Path("runs/reproduce"), help="checkpoints of unfinished runs")
    p.add_argument("--data-dir", type=existing_dir, default=None,
                   help="Fashion-MNIST folder (default: $NFZOO_FASHION_MNIST, else the Debian package's)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=list(Setup.seeds))
    p.add_argument("--epochs", type=positive_int, default=Setup.epochs)
    p.add_argument("--train-images", type=positive_int, default=Setup.train_images,
                   help="a smaller set for a smoke test (at least the study's largest batch)")
    p.add_argument("--test-images", type=positive_int, default=Setup.test_images)
    p.add_argument("--only", choices=("norms", "agc"), default=None, help="run one experiment")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel (worker processes; 1: in this process)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per worker")
    return p


_WORKER: dict = {}


def _init_worker(setup: Setup, data_dir: str | None, threads: int, work: Path, device: str | None) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(setup=setup, data=load_data(setup, data_dir), work=work, device=device)


def _run(kind: str, task: dict) -> tuple[str, dict, Path]:
    work = _WORKER["work"] / "-".join([kind, *(str(v) for v in task.values())])
    run: Callable[..., dict] = run_norm if kind == "norms" else run_agc
    return kind, run(_WORKER["setup"], _WORKER["data"], **task, work=work, device=_WORKER["device"]), work


def _results(tasks: list[tuple[str, dict]], args: argparse.Namespace, setup: Setup) -> Iterator[tuple[str, dict, Path]]:
    """Each task's result as it finishes, from ``args.jobs`` worker processes (or this one)."""
    initargs = (setup, args.data_dir, args.threads, args.work, args.device)
    if args.jobs == 1:
        _init_worker(*initargs)
        yield from (_run(*t) for t in tasks)
        return
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=initargs) as pool:
        yield from (f.result() for f in as_completed([pool.submit(_run, *t) for t in tasks]))


def _write_report(out: Path, setup: Setup, csvs: dict[str, ResultsFile]) -> None:
    if csvs["norms"].rows:
        write_atomic(out / "norms.md", norm_table(csvs["norms"].rows, setup.norms, setup.micro_batches) + "\n")
        plot_norms(csvs["norms"].rows, setup.norms, setup.micro_batches, out / "norms.png")
    if csvs["agc"].rows:
        write_atomic(out / "agc.md", agc_table(csvs["agc"].rows) + "\n")
        plot_agc(csvs["agc"].rows, out / "agc.png")


def _study(argv: Sequence[str] | None, sizes: Setup | None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    setup = replace(sizes or Setup(), train_images=args.train_images, test_images=args.test_images, epochs=args.epochs,
                    norms=tuple(args.norms), seeds=tuple(args.seeds))
    largest = max(setup.batch, *setup.agc_batches)
    if setup.train_images < largest:
        parser.error(f"argument --train-images: {setup.train_images} is less than one batch of the study "
                     f"({largest} images)")
    load_data(setup, args.data_dir)  # fail early, with the install hint, when Fashion-MNIST is missing
    args.out.mkdir(parents=True, exist_ok=True)
    csvs = {"norms": ResultsFile(args.out / "norms.csv"), "agc": ResultsFile(args.out / "agc.csv")}
    tasks = [(kind, t) for kind, make in (("norms", norm_tasks), ("agc", agc_tasks)) if args.only in (None, kind)
             for t in make(setup) if not csvs[kind].done(**t)]
    tasks.sort(key=lambda task: task[1]["seed"])  # a study stopped early has whole seeds
    started = time.perf_counter()
    for kind, row, work in _results(tasks, args, setup):
        csvs[kind].add(row)
        remove_run(work)
        print({k: v for k, v in row.items() if k != "losses"}, flush=True)
    _write_report(args.out, setup, csvs)
    rows = csvs["norms"].rows + csvs["agc"].rows
    meta = {
        "command": shlex.join(["python", "-m", "reproduction", *(sys.argv[1:] if argv is None else argv)]),
        "device": device_name(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))),
        "workers": f"{args.jobs} process(es) x {args.threads} torch thread(s)",
        "torch": torch.__version__,
        "seeds": list(setup.seeds),
        "runs": len(rows),
        "run_seconds_total": round(sum(float(r["seconds"]) for r in rows)),
        "wall_seconds_last_invocation": round(time.perf_counter() - started),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "setup": asdict(setup),
    }
    write_atomic(args.out / "meta.json", json.dumps(meta, indent=1) + "\n")


def main(argv: Sequence[str] | None = None, sizes: Setup | None = None) -> int:
    """Run the study; returns the exit code (``sizes``: the :class:`Setup` the command-line flags
    amend; default ``Setup()``)."""
    return run_cli(lambda args: _study(args, sizes), argv, prog=PROG)
