"""Start a client round's ranks as worker processes, watch them, and end them.

The ClientApp's process supervises and does not train: it writes the work to a private
temporary folder, spawns N workers (NCCL on GPUs, one per device; gloo on CPU), and
waits. Rank 0 writes the result back. A worker that dies (killed, out of memory, an
error) fails the round at once with a sentence: the supervisor kills the other ranks,
which would otherwise wait for it in a collective forever, and joins every worker, so
no process outlives the round; a worker whose supervisor is killed dies with it (Linux).
The supervisor's own torch state is never touched by torch.distributed, which matters in
a simulation, where one process serves many rounds.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch

from flowerbed.client.ranks import ProcessGroupRanks

COLLECTIVE_TIMEOUT = timedelta(minutes=30)
"""How long a rank waits for the others in one collective before it gives up: the
supervisor ends a round with a dead rank at once, so this only bounds a lost supervisor."""


class RankFailed(RuntimeError):
    """A worker of a client round ended before the round did; the message says which."""


def run_on_ranks(
    work: Callable[[ProcessGroupRanks, torch.device, Any], Any],
    task: Any,
    world: int,
    device_type: str,
    threads: int,
    what: str,
) -> Any:
    """`work(ranks, device, task)` on `world` ranks; what rank 0 returned.

    `work` must be importable (a module's function): spawned workers import it anew.
    `what` names the work in the sentence a failed rank gives, e.g. "client 3's round 7".
    """
    context = torch.multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="flowerbed-ranks-") as folder:
        root = Path(folder)
        torch.save({"work": work, "task": task}, root / "task.pt")
        workers = [
            context.Process(
                target=_worker,
                args=(rank, world, device_type, threads, str(root)),
                name=f"flowerbed-rank-{rank}",
                daemon=True,
            )
            for rank in range(world)
        ]
        try:
            for worker in workers:
                worker.start()
            _supervise(workers, what)
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
                worker.join()
        return torch.load(root / "result.pt", weights_only=False)


def _supervise(workers: list, what: str) -> None:
    """Wait for every worker; at the first that ends badly, raise (the caller kills the rest)."""
    running = list(workers)
    while running:
        wait([w.sentinel for w in running])
        for worker in [w for w in running if not w.is_alive()]:
            running.remove(worker)
            if worker.exitcode != 0:
                rank = workers.index(worker)
                raise RankFailed(
                    f"rank {rank} of {len(workers)} ended during {what} "
                    f"({_how(worker.exitcode)}), so the round failed and its other ranks "
                    "were stopped; the node's ledger and state are as before the round"
                )


def _how(exitcode: int) -> str:
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}; its error is above"


def _die_with(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux's PR_SET_PDEATHSIG);
    elsewhere the collectives' timeout ends an orphan."""
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request
        os._exit(1)


def _worker(rank: int, world: int, device_type: str, threads: int, folder: str) -> None:
    """One rank: join the node's process group, do the work, rank 0 writes the result."""
    _die_with(parent=os.getppid())
    root = Path(folder)
    if threads > 0:
        torch.set_num_threads(threads)
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    torch.distributed.init_process_group(
        "nccl" if device_type == "cuda" else "gloo",
        init_method=(root / "rendezvous").as_uri(),
        rank=rank,
        world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
        device_id=device if device_type == "cuda" else None,
    )
    try:
        job = torch.load(root / "task.pt", weights_only=False)
        result = job["work"](ProcessGroupRanks(rank, world), device, job["task"])
        if rank == 0:
            torch.save(result, root / "result.pt.part")
            os.replace(root / "result.pt.part", root / "result.pt")
    finally:
        torch.distributed.destroy_process_group()
