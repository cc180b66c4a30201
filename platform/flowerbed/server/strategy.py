"""FedAvg with aggregation in torch: fp32 accumulators, any transport dtype, fixed order.

Flower's own FedAvg averages in numpy in the transport dtype (slow for fp16, wrong for
bf16 carried as int16 bit patterns). Here every reply is decoded to fp32 and added into
one accumulator, in partition order, so the result does not depend on arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flowerbed.config import FlowerbedConfig
from flowerbed.model.transport import TransportDtype, from_array_record, to_array_record


def weighted_mean(contents: list[RecordDict], keys: tuple[str, ...]) -> dict[str, float]:
    weights = [float(c["metrics"]["num-examples"]) for c in contents]
    total = sum(weights)
    return {
        k: sum(w * float(c["metrics"][k]) for w, c in zip(weights, contents, strict=True)) / total
        for k in keys
    }


def heldout_metrics(contents: list[RecordDict], _: str) -> MetricRecord:
    return MetricRecord(weighted_mean(contents, ("heldout_loss",)))


class TorchFedAvg(FedAvg):
    """FedAvg whose `aggregate_train` decodes `transport_dtype` and returns fp32 arrays."""

    def __init__(self, transport_dtype: TransportDtype, **kwargs) -> None:
        super().__init__(evaluate_metrics_aggr_fn=heldout_metrics, **kwargs)
        self.transport_dtype = transport_dtype

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = sorted(
            (m.content for m in replies if not m.has_error() and m.content.array_records),
            key=lambda c: int(c["metrics"]["partition-id"]),
        )
        if not contents:
            return None, None
        weights = torch.tensor(
            [float(c["metrics"]["num-examples"]) for c in contents], dtype=torch.float64
        )
        weights = (weights / weights.sum()).tolist()
        average: dict[str, torch.Tensor] = {}
        for weight, content in zip(weights, contents, strict=True):
            for name, tensor in from_array_record(content["arrays"], self.transport_dtype).items():
                if name not in average:
                    average[name] = torch.zeros_like(tensor, dtype=torch.float32)
                average[name].add_(tensor.float(), alpha=weight)
        metrics = weighted_mean(contents, ("train_loss",))
        return to_array_record(average, "fp32"), MetricRecord(metrics)


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
    if privacy.mode != "user_level":
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
        FedAvg(evaluate_metrics_aggr_fn=heldout_metrics, **sampling),
        noise_multiplier=privacy.noise_multiplier,
        clipping_norm=privacy.max_grad_norm,
        num_sampled_clients=sampled,
        accountant=accountant,
    )
