"""What travels in a Flower Message between the ServerApp and a ClientApp, defined once.

Server to client, beside the global weights: `TrainInstructions` (a train Message) and
`EvaluateInstructions` (an evaluate Message). Client to server: `TrainReply` and
`EvaluateReply`. Each has one encode/decode pair, and no other module spells a Message
key. A train Message can also ask for the held-out losses of its weights (`ask_heldout`;
they come back in `TrainReply.heldout`). What a client's machine is (its directories,
device, threads) never travels: the node's own config says it (`flowerbed.client.node`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self, TypeVar, get_args

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from flowerbed.config import (
    AdapterConfig,
    ContinualConfig,
    PrivacyConfig,
    TrainConfig,
    TransportDtype,
)
from flowerbed.config.loader import build_dataclass
from flowerbed.config.rules import field_types

ARRAYS = "arrays"  # where Flower's strategies put the weights (FedAvg's arrayrecord_key)
CONFIG = "config"  # where they put the instructions (FedAvg's configrecord_key)
METRICS = "metrics"
SERVER_ROUND = "server-round"  # Flower's strategies write the round under this key
T = TypeVar("T")


class _Instructions:
    """Server to client: flat typed values in the Message's ConfigRecord."""

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(_flatten(self))

    @classmethod
    def from_content(cls, content: RecordDict) -> Self:
        return _unflatten(cls, content[CONFIG])


class _Reply:
    """Client to server: values in the reply's MetricRecord, weights in its ArrayRecord."""

    def to_content(self) -> RecordDict:
        content = RecordDict({METRICS: MetricRecord(_reply_metrics(self, ""))})
        if getattr(self, "weights", None) is not None:
            content[ARRAYS] = self.weights
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> Self:
        values = _reply_values(cls, content[METRICS], "")
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


def ask_heldout(message: Message) -> Message:
    """The same train Message, asking also for the held-out losses of its weights, with
    its own copy of the instructions (Flower's strategies share one payload among nodes)."""
    content = RecordDict(dict(message.content.items()))
    content[CONFIG] = ConfigRecord({**message.content[CONFIG], _key("evaluate_incoming"): True})
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
    """Held-out blocks evaluated (the weight of `heldout_loss`)."""
    heldout_loss: float
    experience_losses: list[float] | None = None
    """Per experience seen, oldest first (when asked for `per_experience`)."""
    experience_sizes: list[int] | None = None


@dataclass(frozen=True)
class TrainReply(_Reply):
    """A client's answer to a train Message."""

    partition_id: int
    num_examples: int
    """Aggregation weight: records trained on (1 under user-level DP, 0 if it did not train).
    Travels as Flower's `num-examples`, the key its FedAvg weights replies by."""
    tokens: int
    train_seconds: float
    train_loss: float | None = None
    """Mean over the sequences trained of each one's next-token loss (None: no training)."""
    epsilon: float | None = None
    """DP-SGD: the client's lifetime epsilon after this round."""
    noise_multiplier: float | None = None
    budget_exhausted: bool = False
    """DP-SGD: the next round would pass the client's budget, so it did not train."""
    heldout: EvaluateReply | None = None
    """Held-out losses of the weights received (when the Message asked for them)."""
    weights: ArrayRecord | None = None


def _key(name: str) -> str:
    """A field's key on the wire: kebab-case, and the round where Flower's strategies put it."""
    return SERVER_ROUND if name == "round" else name.replace("_", "-")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dataclass fields as flat ConfigRecord values: `train.local-steps`; None left out."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        key = prefix + _key(field.name)
        if dataclasses.is_dataclass(value):
            out |= _flatten(value, f"{key}.")
        elif value is not None:
            out[key] = value
    return out


def _unflatten(cls: type[T], record: ConfigRecord) -> T:
    """The inverse of `_flatten`: absent keys are None (their fields are optional)."""
    return build_dataclass(cls, _fields_of(cls, record, ""))


def _fields_of(cls: type, record: ConfigRecord, prefix: str) -> dict[str, Any]:
    hints = field_types(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        key = prefix + _key(field.name)
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            values[field.name] = _fields_of(kind, record, f"{key}.")
        else:
            values[field.name] = record.get(key)
    return values


def _reply_metrics(reply: Any, prefix: str) -> dict[str, Any]:
    """A reply's fields as flat metrics; a nested reply under its field's prefix."""
    metrics: dict[str, Any] = {}
    for field in dataclasses.fields(reply):
        value = getattr(reply, field.name)
        key = prefix + _key(field.name)
        if field.name == "weights" or value is None:
            continue
        if dataclasses.is_dataclass(value):
            metrics |= _reply_metrics(value, f"{key}.")
        else:
            metrics[key] = int(value) if isinstance(value, bool) else value
    return metrics


def _reply_values(cls: type, metrics: MetricRecord, prefix: str) -> dict[str, Any]:
    """The inverse of `_reply_metrics`: absent keys keep their defaults."""
    types = field_types(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name == "weights":
            continue
        key = prefix + _key(field.name)
        nested = [t for t in get_args(types[field.name]) if dataclasses.is_dataclass(t)]
        if nested:
            inner = _reply_values(nested[0], metrics, f"{key}.")
            if inner:
                values[field.name] = nested[0](**inner)
        elif key in metrics:
            value = metrics[key]  # MetricRecord holds no bools: they travel as 0/1
            values[field.name] = bool(value) if types[field.name] is bool else value
    return values
