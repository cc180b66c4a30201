"""A round's aggregation, in one place: admit, combine, outer step.

Each reply is decoded once (`server/replies.py`, into a `TrainReply`); the trained ones
go through three stages, each chosen once from the config by a registry:

1. **admit** (`server/admission.py`): which replies count and what each weighs (the
   round's bounds, `server/bounds.py`); a reply left out gets a sentence and counts as
   its client's failure;
2. **combine** (`server/combiners.py`, `combiner.name`; user-level DP's clip-and-noise
   under `privacy=user_level`): how the admitted updates become one; under secure
   aggregation (`server/secure_aggregation.py`) the survivors' mean is all the server
   holds, so admission checks that sum and it is the combined update;
3. **outer step** (`server/outer.py`, `strategy.name`): how the global weights move
   towards it (FedAvg takes it as it is). The synchronous warm start's rounds
   (`train.sync_rounds`) take the combined weights as they are and leave the outer
   state untouched: they are data-parallel steps, not outer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ArrayRecord

from flowerbed.config import FlowerbedConfig
from flowerbed.privacy.modes import privacy_mode
from flowerbed.protocol import TrainReply
from flowerbed.server.admission import Admission, ClientUpdate, Rejected, Weights
from flowerbed.server.combiners import combiner_for
from flowerbed.server.outer import FedAvgOuter
from flowerbed.server.secure_aggregation import SecureSum


@dataclass(frozen=True)
class Aggregate:
    """What a round's aggregation made of the trained replies."""

    weights: Weights | None
    """The new global weights (None: no reply was admitted)."""
    admitted: list[ClientUpdate]
    rejected: dict[str, str]
    """Each left-out client's sentence, by partition id."""


class AggregationPipeline:
    """admit -> combine -> outer step, built once from the run's config."""

    def __init__(self, cfg: FlowerbedConfig, outer: FedAvgOuter) -> None:
        # DP-SGD's replies carry no count by default and user-level DP's accountant
        # assumes equal weights: under either, the server weighs every reply the same.
        self.admission = Admission(cfg.federation, privacy_mode(cfg.privacy).protects)
        self.combiner = combiner_for(cfg)
        self.outer = outer
        self.sync_rounds = cfg.train.sync_rounds

    def outer_step(self, round_: int, current: Weights, combined: Weights) -> Weights:
        """The strategy's outer step, or the combined weights in a warm-start round."""
        return combined if round_ <= self.sync_rounds else self.outer.step(current, combined)

    def aggregate(
        self, round_: int, trained: list[TrainReply], sent: ArrayRecord, current: Weights
    ) -> Aggregate:
        """The round's new global weights from the replies that trained (`sent`: the
        weights as they went out, `current`: the same in fp32)."""
        admitted, rejected = self.admission.admit(trained, sent, current)
        if not admitted:
            return Aggregate(None, admitted, rejected)
        combined = self.combiner.combine(admitted, current, round_)
        return Aggregate(self.outer_step(round_, current, combined), admitted, rejected)

    def aggregate_sum(
        self, round_: int, secure: SecureSum, answered: list[TrainReply], current: Weights
    ) -> Aggregate:
        """Secure aggregation: the server holds only the survivors' mean update, so
        admission checks the sum (its weights, finite values, norm) and the combine stage
        is that mean."""
        left_out = secure.left_out
        if secure.mean_update is None:
            return Aggregate(None, [], {**left_out, "sum": secure.rejected or "no sum"})
        try:
            tensors = self.admission.bounded_sum(secure.mean_update, current)
        except Rejected as why:
            return Aggregate(None, [], {**left_out, "sum": str(why)})
        admitted = [
            ClientUpdate(r, {}, float(r.num_examples))
            for r in answered
            if r.num_examples > 0 and not r.budget_exhausted and str(r.partition_id) not in left_out
        ]
        return Aggregate(self.outer_step(round_, current, tensors), admitted, dict(left_out))

    def budget_spent(self) -> bool:
        """User-level DP: whether one more release would pass its `max_epsilon`."""
        return self.combiner.budget_spent()

    def user_level_epsilon(self) -> float | None:
        """User-level DP: ε after the releases so far (None: not user-level, or none yet)."""
        return self.combiner.spent()
