"""What a client trains on in one round, worked out once from its folders and its state.

`plan_round` takes one explicit step that writes (the continual state: arrivals noted,
the replay buffer brought up to date, saved to the node's state directory) and
otherwise only reads: the pool, the point on the learning-rate schedule and the planned
sample rates of the client's life follow from the data and that state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from flowerbed.client.node import Node
from flowerbed.client.randomness import reservoir_draws
from flowerbed.client.schedule import Schedule
from flowerbed.continual.policy import ContinualPolicy, continual_policy
from flowerbed.continual.pool import TrainingPool
from flowerbed.continual.state import FILENAME, ContinualState
from flowerbed.continual.stream import Experience, arrived, scan_experiences
from flowerbed.data.blocks import Blocks
from flowerbed.data.documents import DataError
from flowerbed.protocol import TrainInstructions

log = logging.getLogger("flowerbed")


@dataclass
class RoundPlan:
    experiences: list[Experience]
    """The experiences that have arrived, oldest first; the last one is the newest."""
    pool: TrainingPool
    schedule: Schedule
    planned: list[tuple[float, int]]
    """(sample rate, steps) for every round of the client's planned life (DP calibration)."""


def plan_round(job: TrainInstructions, node: Node) -> RoundPlan:
    policy = continual_policy(job.continual)
    everything = scan_experiences(node.data_dir)
    experiences = arrived(everything, job.round, job.arrival_every)
    shards = [e.shard().train for e in everything]  # memory-mapped, cheap
    arrays = [b.tokens for b in shards]
    sizes = [len(a) for a in arrays]
    latest = len(experiences) - 1
    state = advance_state(policy, job, node, experiences, sizes) if policy.keeps_state else None
    units = unit_ids(job, shards)
    counts = [len(np.unique(u)) for u in units] if units else None
    cap = job.privacy.max_blocks_per_unit
    pool = policy.pool(arrays[: latest + 1], state, units and (units[: latest + 1], cap))
    pool.padded = any(b.padded for b in shards)
    return RoundPlan(
        experiences,
        pool,
        schedule_of(policy, job, state, still_to_come=latest < len(everything) - 1),
        planned_life(policy, job, sizes, latest, counts),
    )


def unit_ids(job: TrainInstructions, shards: list[Blocks]) -> list[np.ndarray] | None:
    """Each experience's rows' privacy units under unit-level DP-SGD, else None."""
    if job.privacy.mode != "dp_sgd" or job.privacy.unit == "sequence":
        return None
    try:
        return [b.units(job.privacy.unit) for b in shards]
    except ValueError as err:
        raise DataError(f"{err}; this node's shard was packed without them: cut it again") from None


def advance_state(
    policy: ContinualPolicy,
    job: TrainInstructions,
    node: Node,
    experiences: list[Experience],
    sizes: list[int],
) -> ContinualState:
    """The one write of a round's plan: note arrivals, update the buffer, save the state."""
    path = node.state_dir / FILENAME
    state = ContinualState.load(path)
    for name in state.note_arrivals([e.name for e in experiences], job.round):
        log.info("client %d: experience %s arrived (round %d)", node.partition_id, name, job.round)
    draws = reservoir_draws(job.privacy, job.seed, node.partition_id, node.state_dir)
    policy.advance(state, sizes[: len(experiences) - 1], draws)
    state.save(path)
    return state


def schedule_of(
    policy: ContinualPolicy,
    job: TrainInstructions,
    state: ContinualState | None,
    still_to_come: bool,
) -> Schedule:
    """The whole run's schedule, or the current experience's when re-warming."""
    before = job.train.steps_before
    if not policy.rewarms:
        return Schedule(before(job.round), before(job.total_rounds + 1))
    start = state.arrival_rounds[-1]
    next_arrival_known = job.arrival_every > 0 and still_to_come
    span = job.arrival_every if next_arrival_known else job.total_rounds - start + 1
    return Schedule(before(job.round) - before(start), before(start + span) - before(start))


def planned_life(
    policy: ContinualPolicy,
    job: TrainInstructions,
    sizes: list[int],
    current: int,
    units: list[int] | None = None,
) -> list[tuple[float, int]]:
    """(sample rate, steps) per round of the client's life, from its experiences' sizes.

    In simulation every experience folder exists from the start and the schedule says
    which is trained when; in deployment only the present ones are known, so the plan
    assumes the current experience's rate for the rest of the run. The ledger records the
    true rates, and the budget check stops a client before it overspends.
    """
    every, batch = job.arrival_every, job.train.batch_size
    rounds = range(1, job.total_rounds + 1)

    def experience(r: int) -> int:
        return min(len(sizes) - 1, (r - 1) // every) if every else current

    steps = job.train.steps_in
    return [(policy.sample_rate(sizes, experience(r), batch, units), steps(r)) for r in rounds]
