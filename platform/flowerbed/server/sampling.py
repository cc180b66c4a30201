"""Which clients a round asks, and the Messages it sends them: Flower's FedAvg, for its
sampling only.

Flower's strategies both sample and aggregate; flowerbed uses FedAvg's
`configure_train` / `configure_evaluate` (client sampling, the Message per node) and
aggregates in its own pipeline (`server/pipeline.py`).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from flowerbed.config import FederationConfig


def client_sampler(fed: FederationConfig) -> FedAvg:
    """Flower's FedAvg, configured to sample `fraction_train` and `fraction_evaluate`."""
    return FedAvg(
        fraction_train=fed.fraction_train,
        fraction_evaluate=fed.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if fed.fraction_evaluate > 0 else 0,
        # A round starts once this many nodes are connected: with all num_clients, a
        # deployment would wait forever for an institution whose machine died.
        min_available_nodes=fed.min_clients,
    )
