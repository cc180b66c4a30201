"""What a client trains on in one round: the experiences that have arrived, the pool of
records (newest data, buffer or everything), and the point of the learning-rate schedule.

The continual state (experiences seen, replay buffer) is read from and written back to
the node's state directory, so every Message sees the client's whole history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flowerbed.client.job import ClientJob
from flowerbed.continual.pool import TokenRows, TrainingPool, mix_rates
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
    planned: list[tuple[float, int]]
    """(sample rate, steps) for every round of the client's planned life (DP calibration)."""


def arrived_experiences(job: ClientJob) -> list[Experience]:
    """The experiences in the client's data directory that have arrived by this round."""
    return arrived(scan_experiences(job.data_dir), job.round, job.experience_every)


def round_data(job: ClientJob) -> RoundData:
    everything = scan_experiences(job.data_dir)
    experiences = arrived(everything, job.round, job.experience_every)
    every_train = [e.shard().train.tokens for e in everything]  # memory-mapped, cheap
    trains = every_train[: len(experiences)]
    cfg, steps = job.continual, job.train.local_steps
    whole_run = (job.round - 1) * steps, job.total_rounds * steps
    planned = _planned_life(job, [len(t) for t in every_train], len(trains) - 1)
    if cfg.mode == "off":
        pool = TrainingPool(TokenRows.whole(trains, list(range(len(trains)))))
        return RoundData(experiences, pool, *whole_run, planned)
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
    return RoundData(experiences, pool, *schedule, planned)


def _planned_life(job: ClientJob, sizes: list[int], current: int) -> list[tuple[float, int]]:
    """(sample rate, steps) per round of the client's life, from its experiences' sizes.

    In simulation every experience folder exists from the start and the schedule says
    which is trained when; in deployment only the present ones are known, so the plan
    assumes the current experience's rate for the rest of the run. The ledger records the
    true rates, and the budget check stops a client before it overspends.
    """
    cfg, batch = job.continual, job.train.batch_size

    def rate(e: int) -> float:
        if cfg.mode in ("off", "cumulative"):
            return min(1.0, batch / sum(sizes[: e + 1] if cfg.mode == "cumulative" else sizes))
        replayed = (
            _buffer_fill(cfg.policy, cfg.buffer_size, sizes[:e]) if cfg.mode == "replay" else 0
        )
        return max(mix_rates(sizes[e], replayed, cfg.replay_fraction, batch))

    every = job.experience_every
    rounds = range(1, job.total_rounds + 1)
    which = [min(len(sizes) - 1, (r - 1) // every) if every else current for r in rounds]
    return [(rate(e), job.train.local_steps) for e in which]


def _buffer_fill(policy: str, buffer_size: int, past: list[int]) -> int:
    """Records a full buffer holds after `past` experiences (Avalanche's group split)."""
    if not past:
        return 0
    if policy == "reservoir":
        return min(buffer_size, sum(past))
    share, extra = divmod(buffer_size, len(past))
    return sum(min(share + (g < extra), n) for g, n in enumerate(past))
