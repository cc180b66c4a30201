"""The whole run's config: the sections, the top-level keys, and the rules that span sections.

Every default is in `conf/config.yaml`, once; a test composes every option and checks
that the YAML tree and this schema name the same keys, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flowerbed.config import sections
from flowerbed.config.federation import FederationConfig
from flowerbed.config.modes import ContinualConfig, PrivacyConfig
from flowerbed.config.node_policy import NodePolicyConfig
from flowerbed.config.robustness import CombinerConfig, FaultsConfig
from flowerbed.config.rules import require
from flowerbed.config.secure import SecureAggregationConfig

DeviceName = Literal["auto", "cpu", "cuda"]


@dataclass
class FlowerbedConfig:
    """A whole run: what `flowerbed simulate` composes with Hydra and validates."""

    model: sections.ModelConfig
    adapter: sections.AdapterConfig
    data: sections.DataConfig
    federation: FederationConfig
    train: sections.TrainConfig
    strategy: sections.StrategyConfig
    combiner: CombinerConfig
    secagg: SecureAggregationConfig
    privacy: PrivacyConfig
    node_policy: NodePolicyConfig
    continual: ContinualConfig
    tracking: sections.TrackingConfig
    faults: FaultsConfig
    name: str
    """A label for the run (experiment files set it)."""
    seed: int
    device: DeviceName
    """auto: CUDA with bf16 autocast when a GPU is visible, else CPU."""
    resume: str | None
    """A run directory to continue from its newest round checkpoint."""

    def __post_init__(self) -> None:
        self._resolve_unit()
        self._check_robustness()
        self._check_ranks()
        require(
            not (
                self.privacy.mode == "dp_sgd"
                and self.privacy.grad_sample_mode in ("ghost", "bookkeeping")
                and self.model.tie_embeddings
            ),
            f"privacy.grad_sample_mode={self.privacy.grad_sample_mode} cannot train tied "
            "embeddings: set model.tie_embeddings=false or privacy.grad_sample_mode=hooks",
        )
        continual = self.continual
        require(
            not continual.enabled or self.federation.fraction_evaluate > 0,
            "continual learning measures forgetting with the clients' held-out losses: "
            "set federation.fraction_evaluate > 0",
        )
        every = continual.arrival_interval(self.federation.rounds)
        if every:
            last_arrival = 1 + (continual.experiences - 1) * every
            require(
                last_arrival <= self.federation.rounds,
                f"continual: experience {continual.experiences} would arrive in round "
                f"{last_arrival}, after the last round ({self.federation.rounds}): raise "
                "federation.rounds or lower continual.experiences or continual.arrival_every",
            )
        self._check_bands()
        require(
            self.privacy.mode != "user_level" or self.federation.transport_dtype == "fp32",
            "privacy=user_level clips and noises updates in fp32: "
            "set federation.transport_dtype=fp32",
        )

    def _check_bands(self) -> None:
        """Banded noise needs whole sampling cycles in every round."""
        privacy, train = self.privacy, self.train
        if privacy.mode != "dp_sgd" or privacy.mechanism != "banded":
            return
        require(
            train.sync_rounds == 0,
            "privacy.mechanism=banded needs whole sampling cycles in every round: set "
            "train.sync_rounds=0",
        )
        require(
            privacy.bands == "auto" or train.local_steps % privacy.bands == 0,
            f"privacy.bands={privacy.bands} does not divide train.local_steps="
            f"{train.local_steps}: every round must hold whole sampling cycles; choose a "
            "divisor, or privacy.bands=auto",
        )

    def _resolve_unit(self) -> None:
        """Settle `privacy.unit=auto` and `data.packing=auto`, and check the unit can be
        protected: the saved config.yaml holds the resolved values."""
        privacy, data = self.privacy, self.data
        dp_sgd = privacy.mode == "dp_sgd"
        if privacy.unit == "auto":  # the user's own files: a document is the honest unit
            privacy.unit = "document" if dp_sgd and data.corpus == "files" else "sequence"
        by_unit = dp_sgd and privacy.unit != "sequence"
        if data.packing == "auto":
            data.packing = "documents" if by_unit else "stream"
        if not by_unit:
            return
        unit = f"privacy.unit={privacy.unit}"
        require(
            data.packing == "documents",
            f"{unit} needs blocks that never cross a document: set data.packing=documents "
            "(or auto)",
        )
        require(
            privacy.unit != "user" or data.corpus == "files",
            f"privacy.unit=user needs users, which the built-in {data.corpus} corpus does not "
            "have: use data.corpus=files with data.user_field (or a folder per user)",
        )
        require(
            privacy.grad_sample_mode != "ghost",
            f"privacy.grad_sample_mode=ghost clips sequences only, not {unit}: use "
            "privacy.grad_sample_mode=bookkeeping (or hooks)",
        )
        require(
            not privacy.max_physical_batch
            or privacy.max_physical_batch >= privacy.max_blocks_per_unit,
            f"privacy.max_physical_batch={privacy.max_physical_batch} would split a unit of "
            f"privacy.max_blocks_per_unit={privacy.max_blocks_per_unit} blocks across two "
            "backward passes: raise it to at least that, or set it to 0",
        )

    @property
    def clients_per_round(self) -> int:
        """The clients sampled to train each round (Flower's rule: at least one)."""
        fed = self.federation
        return max(int(fed.num_clients * fed.fraction_train), 1)

    def _check_robustness(self) -> None:
        """The combiner's need for clients, and faults that name real clients."""
        combiner, n = self.combiner, self.clients_per_round
        f = combiner.faulty_clients
        if combiner.name in ("krum", "multikrum"):
            require(
                n >= 2 * f + 3,
                f"combiner={combiner.name} tolerates combiner.faulty_clients={f} only with "
                f"at least {2 * f + 3} clients a round (2f + 3), but a round samples {n}: "
                "add clients, raise federation.fraction_train or lower faulty_clients",
            )
            require(
                combiner.selected is None or combiner.selected <= n - f,
                f"combiner.selected={combiner.selected} is more than the n - f = {n - f} "
                "updates Multi-Krum may trust",
            )
        if combiner.name == "median":
            require(
                n > 2 * f,
                f"combiner=median tolerates combiner.faulty_clients={f} only with more "
                f"honest clients than hostile ones: at least {2 * f + 1} a round, not {n}",
            )
        if combiner.name == "trimmed_mean":
            cut = int(combiner.trim_fraction * n)
            require(
                n - 2 * cut >= 1,
                f"combiner.trim_fraction={combiner.trim_fraction} cuts all {n} updates",
            )
        if self.federation.secure_aggregation != "off":
            self._check_secure_aggregation()
        require(
            self.privacy.mode != "user_level" or combiner.name == "mean",
            f"privacy=user_level clips and noises the mean of the updates: it cannot use "
            f"combiner={combiner.name}; use combiner=mean",
        )
        if self.faults.kind != "none":
            clients = self.federation.num_clients
            require(
                bool(self.faults.clients) and all(0 <= c < clients for c in self.faults.clients),
                f"faults={self.faults.kind} needs faults.clients, partition ids in "
                f"[0, {clients - 1}], got {self.faults.clients}",
            )

    def _check_ranks(self) -> None:
        """Every rank of a simulated client gets rows; a killed rank needs a second one."""
        ranks = self.federation.ranks_per_client
        require(
            self.train.batch_size >= ranks,
            f"train.batch_size={self.train.batch_size} cannot be shared by "
            f"federation.ranks_per_client={ranks} ranks: give each rank a row at least",
        )
        require(
            self.faults.kind != "rank_crash" or ranks >= 2,
            "faults=rank_crash kills rank 1 of a client's round: set "
            "federation.ranks_per_client=2 or more",
        )

    def _check_secure_aggregation(self) -> None:
        """What secure aggregation can serve: a sum of updates from enough clients."""
        n, secagg = self.clients_per_round, self.secagg
        require(
            self.combiner.name == "mean",
            f"combiner={self.combiner.name} needs each client's update, which secure "
            "aggregation hides from the server: use combiner=mean (admission then checks "
            "the sum)",
        )
        require(
            self.privacy.mode != "user_level",
            "privacy=user_level clips each client's update at the server, which secure "
            "aggregation hides: use privacy=dp_sgd (each client's own noise) or privacy=off",
        )
        problem = secagg.problem(n)
        require(problem is None, str(problem))
