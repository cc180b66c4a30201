"""Aggregation strategies: FedAvg in torch, or Flower's user-level DP wrapper around FedAvg.

Flower's own FedAvg averages in numpy in the transport dtype (slow for fp16, wrong for
bf16 carried as int16 bit patterns). `TorchFedAvg` reads every reply in place and adds it
into one fp32 accumulator, in partition order, so the result does not depend on arrival
order; the round engine takes that accumulator as it is (`average`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from flowerbed.config import FlowerbedConfig, TransportDtype
from flowerbed.model.transport import read_only, to_array_record
from flowerbed.privacy.modes import privacy_mode
from flowerbed.protocol import TrainReply


class TorchFedAvg(FedAvg):
    """FedAvg whose `aggregate_train` decodes `transport_dtype` and returns fp32 arrays."""

    def __init__(self, transport_dtype: TransportDtype, **kwargs) -> None:
        super().__init__(**kwargs)
        self.transport_dtype = transport_dtype

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The weighted mean of the replies' weights; the metrics are the engine's to read."""
        average = self.average(replies)
        return (None if average is None else to_array_record(average, "fp32")), None

    def average(self, replies: Iterable[Message]) -> dict[str, torch.Tensor] | None:
        """The weighted mean of the replies' weights, in fp32; None when nobody trained."""
        trained = sorted(
            (r for r in _train_replies(replies) if r.weights is not None),
            key=lambda r: r.partition_id,
        )
        if not trained:
            return None
        weights = torch.tensor([float(r.num_examples) for r in trained], dtype=torch.float64)
        weights = (weights / weights.sum()).tolist()
        average: dict[str, torch.Tensor] = {}
        for weight, reply in zip(weights, trained, strict=True):
            # read in place, in the transport dtype, accumulated straight into fp32
            for name, tensor in read_only(reply.weights, self.transport_dtype).items():
                if name not in average:
                    average[name] = torch.zeros(tensor.shape, dtype=torch.float32)
                average[name].add_(tensor, alpha=weight)
        return average


def _train_replies(replies: Iterable[Message]) -> list[TrainReply]:
    return [TrainReply.from_content(m.content) for m in replies if not m.has_error()]


def make_strategy(cfg: FlowerbedConfig) -> FedAvg:
    """TorchFedAvg, or for user-level DP Flower's server-side fixed-clipping wrapper.

    The wrapper's accountant only accepts Flower's own `FedAvg.aggregate_train` with equal
    client weights (clients then report weight 1) and fp32 transport (config checks it).
    """
    fed, privacy = cfg.federation, cfg.privacy
    sampling = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": fed.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if fed.fraction_evaluate > 0 else 0,
        # A round starts once this many nodes are connected: with all num_clients, a
        # deployment would wait forever for an institution whose machine died.
        "min_available_nodes": fed.min_clients,
    }
    if not privacy_mode(privacy).server_private:
        return TorchFedAvg(transport_dtype=fed.transport_dtype, **sampling)
    from flwr.serverapp import (
        NeighboringRelation,
        PrivacyConfig,
        RdpAccountant,
        SamplingMethod,
    )
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    sampled = max(int(fed.num_clients * fed.fraction_train), 1)
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=privacy.delta,
            population_size=fed.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=privacy.max_epsilon,
        )
    )
    return DifferentialPrivacyServerSideFixedClipping(
        FedAvg(**sampling),
        noise_multiplier=privacy.noise_multiplier,
        clipping_norm=privacy.max_grad_norm,
        num_sampled_clients=sampled,
        accountant=accountant,
    )
