"""What travels in a Flower Message between the ServerApp and a ClientApp, defined once.

Server to client, beside the global weights: `TrainInstructions` (a train Message) and
`EvaluateInstructions` (an evaluate Message). Client to server: `TrainReply` and
`EvaluateReply`. Each has one encode/decode pair, and no other module spells a Message
key (`flowerbed.wire` says how a dataclass becomes one). A train Message can also ask
for the held-out losses of its weights (`ask_heldout`; they come back in
`TrainReply.heldout`). What a client's machine is (its directories,
device, threads) never travels: the node's own config says it (`flowerbed.client.node`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from flowerbed.config import (
    AdapterConfig,
    ContinualConfig,
    PrivacyConfig,
    TrainConfig,
    TransportDtype,
)
from flowerbed.wire import SERVER_ROUND as SERVER_ROUND
from flowerbed.wire import flatten, key_of, reply_metrics, reply_values, unflatten

ARRAYS = "arrays"  # where Flower's strategies put the weights (FedAvg's arrayrecord_key)
CONFIG = "config"  # where they put the instructions (FedAvg's configrecord_key)
METRICS = "metrics"


class _Instructions:
    """Server to client: flat typed values in the Message's ConfigRecord."""

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(flatten(self))

    @classmethod
    def from_content(cls, content: RecordDict) -> Self:
        return unflatten(cls, content[CONFIG])


class _Reply:
    """Client to server: numbers in the reply's MetricRecord, text (a refusal's sentence) in
    its ConfigRecord, weights in its ArrayRecord."""

    def to_content(self) -> RecordDict:
        values = reply_metrics(self, "")
        texts = {k: v for k, v in values.items() if isinstance(v, str)}
        numbers = {k: v for k, v in values.items() if k not in texts}
        content = RecordDict({METRICS: MetricRecord(numbers)})
        if texts:
            content[CONFIG] = ConfigRecord(texts)
        if getattr(self, "weights", None) is not None:
            content[ARRAYS] = self.weights
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> Self:
        texts = content[CONFIG] if CONFIG in content.config_records else {}
        values = reply_values(cls, {**content[METRICS], **texts}, "")
        if ARRAYS in content.array_records:
            values["weights"] = content[ARRAYS]
        return cls(**values)


@dataclass(frozen=True)
class ModelSpec:
    """How a client builds the model the global weights belong to."""

    architecture: str
    """The model's Hugging Face config as JSON: the client builds the same model."""
    adapter: AdapterConfig
    base_source: str | None = None
    """Adapters: the pretrained directory or hub name of the frozen base (None: the
    preset's initialisation from `base_seed`)."""
    base_seed: int = 0
    base_hash: str | None = None
    """Adapters: the content hash of the server's base; a client with another refuses."""


@dataclass(frozen=True)
class TrainInstructions(_Instructions):
    """What the server asks of a client in a train Message."""

    round: int
    total_rounds: int
    seed: int
    model: ModelSpec
    transport_dtype: TransportDtype
    arrival_every: int
    """Rounds between experience arrivals (simulation's schedule); 0: every folder present."""
    uniform_weights: bool
    """Reply with weight 1: Flower's user-level DP accountant needs equal client weights."""
    keep_inner_state: bool
    """Restore the client's AdamW moments from its last round and save them after this one."""
    evaluate_incoming: bool
    """Before training, report the held-out losses of the weights received: the global
    model after round `round - 1`, on the experiences that had arrived by then."""
    train: TrainConfig
    privacy: PrivacyConfig
    continual: ContinualConfig
    secure_max_weight: float | None = None
    """Secure aggregation: the largest weight the reply may claim (None: not secure)."""

    def evaluation(self, round_: int) -> EvaluateInstructions:
        """What an evaluate Message asks about round `round_`'s model in this run: the
        one mapping from the run's settings, for the server and for `evaluate_incoming`."""
        return EvaluateInstructions(
            round=round_,
            model=self.model,
            transport_dtype=self.transport_dtype,
            arrival_every=self.arrival_every,
            batch_size=self.train.batch_size,
            eval_batches=self.train.eval_batches,
            per_experience=self.continual.enabled,
            privacy=self.privacy,
        )


@dataclass(frozen=True)
class EvaluateInstructions(_Instructions):
    """What the server asks of a client in an evaluate Message: held-out losses."""

    round: int
    model: ModelSpec
    transport_dtype: TransportDtype
    arrival_every: int
    batch_size: int
    eval_batches: int
    """Batches per held-out set (0: all of them)."""
    per_experience: bool
    """Report the loss of every experience seen (continual learning), not only the mean."""
    privacy: PrivacyConfig
    """The run's privacy: the node checks it against its policy, which says what leaves."""


def ask_heldout(message: Message) -> Message:
    """The same train Message, asking also for the held-out losses of its weights, with
    its own copy of the instructions (Flower's strategies share one payload among nodes)."""
    content = RecordDict(dict(message.content.items()))
    content[CONFIG] = ConfigRecord({**message.content[CONFIG], key_of("evaluate_incoming"): True})
    meta = message.metadata
    return Message(content, dst_node_id=meta.dst_node_id, message_type=meta.message_type)


def global_weights(content: RecordDict) -> ArrayRecord:
    """The weights a train or evaluate Message carries."""
    return content[ARRAYS]


@dataclass(frozen=True)
class EvaluateReply(_Reply):
    """A client's held-out losses of the global weights."""

    partition_id: int
    num_examples: int
    """Held-out blocks evaluated (the weight of `heldout_loss`; 1 when withheld)."""
    heldout_loss: float | None = None
    """None: withheld by the node's policy (`privacy.release`)."""
    experience_losses: list[float] | None = None
    """Per experience seen, oldest first (when asked for `per_experience`)."""
    experience_sizes: list[int] | None = None
    refused: str | None = None
    """Why the node refused the server's privacy settings (its policy's sentence)."""
    outside_guarantee: bool = False
    """Exact losses and counts under DP-SGD: the node's policy let them out unprotected."""


@dataclass(frozen=True)
class TrainReply(_Reply):
    """A client's answer to a train Message."""

    partition_id: int
    num_examples: int
    """Aggregation weight: records trained on (1 under user-level DP and under DP-SGD unless
    the node releases exact counts; 0 if it did not train). Travels as Flower's
    `num-examples`, the key its FedAvg weights replies by."""
    tokens: int
    """Tokens trained (under DP-SGD without exact release: the planned count)."""
    train_seconds: float
    train_loss: float | None = None
    """Mean over the sequences trained of each one's next-token loss (None: no training,
    or withheld by the node's policy)."""
    epsilon: float | None = None
    """DP-SGD: the client's lifetime epsilon after this round."""
    noise_multiplier: float | None = None
    budget_exhausted: bool = False
    """DP-SGD: the next round would pass the client's budget, so it did not train."""
    heldout: EvaluateReply | None = None
    """Held-out losses of the weights received (when the Message asked for them)."""
    refused: str | None = None
    """Why the node refused the server's privacy settings (it did not train)."""
    outside_guarantee: bool = False
    """Exact loss and counts under DP-SGD: the node's policy let them out unprotected."""
    weights: ArrayRecord | None = None
