"""Start a client round's ranks as worker processes, watch them, and end them.

The ClientApp's process supervises and does not train: it writes the work to a private
temporary folder, starts N workers (NCCL on GPUs, one per device; gloo on CPU), and
waits. Workers are forked from a fork server that imported torch, flowerbed and the
model's code once (`preload`), never from the supervisor itself, whose threads and CUDA
state a fork must not copy; in a simulation the server outlives the round, so later
rounds start their workers in a fraction of a second. Rank 0 writes the result back.

A worker that dies (killed, out of memory, an error) fails the round at once with a
sentence: the supervisor kills the other ranks, which would otherwise wait for it in a
collective forever, and joins every worker, so no process outlives the round; a worker
whose supervisor is killed ends on its own. The supervisor's own torch state is never
touched by torch.distributed, which matters in a simulation, where one process serves
many rounds.
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch

from flowerbed.model.ranks import ProcessGroupRanks

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
    preload: tuple[str, ...] = (),
    scratch: Path | None = None,
) -> Any:
    """`work(ranks, device, task)` on `world` ranks; what rank 0 returned.

    `work` must be importable (a module's function). `what` names the work in the
    sentence a failed rank gives, e.g. "client 3's round 7"; `preload`: modules the fork
    server imports once, when it starts; `scratch`: where the task's folder is made (the
    node's state directory, when the task holds a secret: a crash leaves it there, not in
    the machine's temporary folder).
    """
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *preload])
    if scratch is not None:
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flowerbed-ranks-", dir=scratch) as folder:
        root = Path(folder)
        torch.save({"work": work, "task": task}, root / "task.pt")
        workers = [
            context.Process(
                target=_worker,
                args=(rank, world, device_type, threads, str(root), os.getpid()),
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


def _die_with(supervisor: int) -> None:
    """End this worker when the supervisor ends, however it ends: a thread waits on the
    supervisor's process (a pidfd on Linux; elsewhere it polls every second)."""

    def watch() -> None:
        try:
            select.select([os.pidfd_open(supervisor)], [], [])
        except (AttributeError, OSError):  # no pidfd here, or the supervisor is gone already
            while _alive(supervisor):
                time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="flowerbed-supervisor-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker(
    rank: int, world: int, device_type: str, threads: int, folder: str, supervisor: int
) -> None:
    """One rank: join the node's process group, do the work, rank 0 writes the result."""
    _die_with(supervisor)
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
    os._exit(0)  # the work is written: skip the interpreter's teardown (~1 s), nobody waits
