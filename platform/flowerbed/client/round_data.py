"""What a client trains on in one round: the experiences that have arrived, the pool of
records (newest data, buffer or everything), and the point of the learning-rate schedule.

The continual state (experiences seen, replay buffer) is read from and written back to
the node's state directory, so every Message sees the client's whole history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flowerbed.client.job import ClientJob
from flowerbed.continual.pool import TokenRows, TrainingPool
from flowerbed.continual.replay import buffer_refs, update_buffer
from flowerbed.continual.state import FILENAME, ContinualState
from flowerbed.continual.stream import Experience, arrived, scan_experiences

log = logging.getLogger("flowerbed")


@dataclass
class RoundData:
    experiences: list[Experience]
    """The experiences that have arrived, oldest first; the last one is being trained."""
    pool: TrainingPool
    first_step: int
    """Where this round starts on the learning-rate schedule."""
    schedule_steps: int
    """Length of the schedule: the whole run, or the current experience when re-warming."""
    planned_rate: float
    """The highest sample rate the client expects over its life (for DP calibration)."""


def arrived_experiences(job: ClientJob) -> list[Experience]:
    """The experiences in the client's data directory that have arrived by this round."""
    return arrived(scan_experiences(job.data_dir), job.round, job.experience_every)


def round_data(job: ClientJob) -> RoundData:
    everything = scan_experiences(job.data_dir)
    experiences = arrived(everything, job.round, job.experience_every)
    trains = [e.shard().train.tokens for e in experiences]
    cfg, steps, batch = job.continual, job.train.local_steps, job.train.batch_size
    whole_run = (job.round - 1) * steps, job.total_rounds * steps
    if cfg.mode == "off":
        pool = TrainingPool(TokenRows.whole(trains, list(range(len(trains)))))
        return RoundData(experiences, pool, *whole_run, pool.accounting_rate(batch))
    path = job.state_dir / FILENAME
    state = ContinualState.load(path)
    for name in state.note_arrivals([e.name for e in experiences], job.round):
        log.info("client %d: experience %s arrived (round %d)", job.partition_id, name, job.round)
    latest = len(experiences) - 1
    replay = None
    if cfg.mode == "replay" and latest > 0:
        sizes = [len(t) for t in trains[:-1]]
        state.buffer = update_buffer(state.buffer, cfg, sizes, [job.seed, job.partition_id])
        replay = TokenRows(trains, buffer_refs(state.buffer))
    elif cfg.mode == "replay":
        state.buffer = None  # the first experience: nothing to replay yet
    state.save(path)
    which = list(range(len(trains))) if cfg.mode == "cumulative" else [latest]
    pool = TrainingPool(TokenRows.whole(trains, which), replay, cfg.replay_fraction)
    if cfg.rewarm:
        still_to_come = job.experience_every > 0 and latest < len(everything) - 1
        start = state.arrival_rounds[-1]
        span = job.experience_every if still_to_come else job.total_rounds - start + 1
        schedule = (job.round - start) * steps, span * steps
    else:
        schedule = whole_run
    return RoundData(experiences, pool, *schedule, _planned_rate(pool, job))


def _planned_rate(pool: TrainingPool, job: ClientJob) -> float:
    """This round's sample rate, or the replay rate once the buffer is full if higher.

    Later experiences of other sizes can still raise it; the ledger records the true
    rate of every round and the budget check stops a client before it overspends.
    """
    batch, cfg = job.train.batch_size, job.continual
    rate = pool.accounting_rate(batch)
    if cfg.mode == "replay":
        filled = min(cfg.buffer_size, len(pool.new))
        rate = max(rate, min(1.0, cfg.replay_fraction * batch / filled))
    return rate
