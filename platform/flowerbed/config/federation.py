"""The federation's config section: who takes part, how weights travel, and the bounds every
reply is admitted within (`server/admission.py`, `server/bounds.py`).

Defaults live in `conf/config.yaml` alone, as for every section (`config/sections.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from flowerbed.config.rules import Section, at_least, between, positive, require
from flowerbed.config.sections import TransportDtype

Auto = Literal["auto"]
"""A bound the server derives from each round's own replies (`server/bounds.py`)."""


@dataclass
class FederationConfig(Section):
    """Who takes part, how often, and how weights travel."""

    key = "federation"
    num_clients: Annotated[int, at_least(1)]
    rounds: Annotated[int, at_least(1)]
    fraction_train: Annotated[float, between(0, 1)]
    """Share of clients sampled to train each round (more than 0)."""
    fraction_evaluate: Annotated[float, between(0, 1)]
    """Share of clients that evaluate the global model on their held-out split each round."""
    min_clients: int
    """A round starts once this many nodes are connected, and a round with fewer
    successful replies than this stops the run."""
    transport_dtype: TransportDtype
    """Weights on the wire: fp32, fp16 (half the bytes), or bf16 carried bit-exact."""
    client_cpus: Annotated[float, positive()]
    """CPU cores reserved per simulated client (Ray)."""
    client_gpus: Annotated[float, at_least(0)]
    """GPU share per simulated client; 0.25 runs four clients on one GPU."""
    ranks_per_client: Annotated[int, at_least(1)]
    """Processes each simulated client trains its rounds on (data parallel; on GPUs one
    whole GPU each, so client_gpus must equal it)."""
    ray_address: str | None
    """Join this Ray cluster instead of starting one: auto (found on this machine), or
    HOST:PORT of its head node; null starts a private one."""
    round_timeout: Annotated[float, positive()]
    max_examples_per_client: Annotated[int | Auto | None, at_least(1)]
    """Without DP, the largest aggregation weight a reply may claim; a larger claim counts
    as the cap (null: no cap). Under DP-SGD and user-level DP every admitted reply weighs
    1, whatever it claims. `auto`: `examples_factor` times the largest claim among the
    round's other replies, which one hostile client cannot raise past an honest claim;
    server/bounds.py says why this and not the median."""
    examples_factor: Annotated[float, at_least(1)]
    """`max_examples_per_client=auto`: a claim counts up to this times the largest other
    claim of its round. In the partitions of conf/experiment/ (IID, by domain, Dirichlet)
    no honest claim passes 4x the next largest but in 1 to 6% of the rounds a
    Dirichlet(0.3) federation could sample (docs/robustness.md, "Safe defaults")."""
    max_update_norm: Annotated[float | Auto | None, positive()]
    """The largest L2 norm of a reply's update, its weights minus the global ones (null:
    any). `auto`: `update_norm_factor` times the lower median of the round's update norms,
    a bound honest clients never reach and hostile ones, fewer than half, cannot raise
    (server/bounds.py). Under secure aggregation the server sees only the sum of the
    updates: a number bounds the sum, `auto` leaves it unbounded."""
    update_norm_factor: Annotated[float, at_least(1)]
    """`max_update_norm=auto`: an update may be this many times the round's lower median
    norm. The largest honest update of a round measured at most 1.27x the smallest (eleven
    honest runs: IID, by domain, Dirichlet; DP and not), and AdamW keeps them within about
    sqrt(local_steps) of each other (docs/robustness.md, "Safe defaults")."""
    update_norm_policy: Literal["clip", "reject"]
    """An update above `max_update_norm`: left out of the round, or scaled down to it.
    `reject` by default: an update past a bound honest ones never reach is not honest, and
    clipped it would still pull the mean its way."""
    secure_aggregation: Literal["off", "secaggplus"]
    """secaggplus: the coordinator receives only masked updates and sees their sum
    (settings in `secagg`); admission then checks the sum, not each update."""

    def check(self) -> None:
        require(self.fraction_train > 0, "federation.fraction_train must be > 0")
        require(
            self.client_gpus == 0
            or self.ranks_per_client == 1
            or self.client_gpus == self.ranks_per_client,
            f"federation.ranks_per_client={self.ranks_per_client} on GPUs takes one whole GPU "
            f"per rank: set federation.client_gpus={self.ranks_per_client}, not "
            f"{self.client_gpus}",
        )
        require(
            1 <= self.min_clients <= self.num_clients,
            f"federation.min_clients must be in [1, num_clients={self.num_clients}], "
            f"got {self.min_clients}",
        )
