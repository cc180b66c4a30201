"""`train.batch_size=auto`: the noise-batch rule settles the batch before the schema is read.

Under DP-SGD the batch that spends a token budget best is the largest that still leaves
`MIN_STEPS` steps over the client's life (`privacy/noise_batch.py`). The budget is
`train.sequences_per_round` times `federation.rounds`, both in the config, so the batch
is settled here, once, and the run's saved config.yaml holds the number it trained with.
"""

from __future__ import annotations

from typing import Any

from flowerbed.config.rules import SchemaError
from flowerbed.privacy.noise_batch import MIN_STEPS, batches_weighed


def settle_auto_batch(source: dict[str, Any]) -> None:
    """Replace `train.batch_size: auto` in a raw config by the rule's batch."""
    train = source.get("train")
    if not isinstance(train, dict) or train.get("batch_size") != "auto":
        return
    privacy = source.get("privacy") or {}
    if privacy.get("mode") != "dp_sgd":
        raise SchemaError(
            "train.batch_size=auto chooses the batch for DP-SGD's noise: with "
            f"privacy={privacy.get('mode')} give train.batch_size as a number"
        )
    per_round = train.get("sequences_per_round")
    if not isinstance(per_round, int):
        raise SchemaError(
            "train.batch_size=auto needs the sequences a client trains on per round: give "
            "train.sequences_per_round (the batch then sets the local steps)"
        )
    rounds = (source.get("federation") or {}).get("rounds", 1)
    train["batch_size"] = batches_weighed(rounds * per_round, MIN_STEPS, per_round=per_round)[-1]
