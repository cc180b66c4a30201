"""The config schema: one dataclass per Hydra group, validated when a run starts.

Every field has a default so that a partial YAML file is enough; `__post_init__` checks
the rules that span several fields and names the key that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ModelPreset = Literal["tiny", "small", "125m", "350m", "1b"]
CorpusName = Literal["stdlib", "synthetic", "files"]
PartitionName = Literal["iid", "domain", "dirichlet"]
TransportDtype = Literal["fp32", "fp16", "bf16"]
DeviceName = Literal["auto", "cpu", "cuda"]


class SchemaError(ValueError):
    """A value breaks a rule of the schema; the message names the key."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SchemaError(message)


@dataclass
class ModelConfig:
    """Which causal LM the federation trains."""

    preset: ModelPreset = "small"
    """Size preset for a model built from scratch (ignored when `pretrained` is set)."""
    pretrained: str | None = None
    """Local directory or hub name to fine-tune from (for example an earlier final_model)."""
    tie_embeddings: bool = False
    """Tie input and output embeddings. Off by default: Opacus ghost clipping refuses them."""


@dataclass
class DataConfig:
    """Where the text comes from, how it becomes blocks, and how clients share it."""

    corpus: CorpusName = "stdlib"
    """Built-in `stdlib` or `synthetic`, or the user's own `files`."""
    paths: list[str] = field(default_factory=list)
    """Files or folders for `corpus=files` (.txt, .jsonl, .parquet)."""
    text_field: str = "text"
    """Column holding the text in .jsonl and .parquet files."""
    tokenizer: str = "auto"
    """`byte` (built in), a path or hub name, or `auto` (the pretrained model's, else byte)."""
    seq_len: int = 128
    """Tokens per training block."""
    max_bytes_per_domain: int = 2_000_000
    """Cap on the text read per domain (stdlib and files), so a run stays small."""
    synthetic_domains: int = 4
    synthetic_docs_per_domain: int = 400
    synthetic_shift: float = 1.0
    """0: every domain draws from the same words; 1: domains share no words."""
    partition: PartitionName = "iid"
    dirichlet_alpha: float = 0.5
    """Concentration of the Dirichlet skew over domains (smaller is more skewed)."""
    val_fraction: float = 0.05
    """Share of each domain's blocks held out for the server's validation."""
    heldout_fraction: float = 0.1
    """Share of each client's blocks it keeps for held-out evaluation."""
    cache_dir: str = "~/.cache/flowerbed"
    """Where packed blocks are cached so a second run does not tokenize again."""

    def __post_init__(self) -> None:
        _require(self.seq_len >= 8, f"data.seq_len must be >= 8, got {self.seq_len}")
        _require(
            self.corpus != "files" or bool(self.paths),
            "data.paths must list at least one file or folder when data.corpus=files",
        )
        for name in ("val_fraction", "heldout_fraction"):
            value = getattr(self, name)
            _require(0.0 < value < 0.5, f"data.{name} must be in (0, 0.5), got {value}")
        _require(
            0.0 <= self.synthetic_shift <= 1.0,
            f"data.synthetic_shift must be in [0, 1], got {self.synthetic_shift}",
        )
        _require(self.dirichlet_alpha > 0, "data.dirichlet_alpha must be > 0")
        _require(self.synthetic_domains >= 1, "data.synthetic_domains must be >= 1")
        _require(self.max_bytes_per_domain > 0, "data.max_bytes_per_domain must be > 0")


@dataclass
class FederationConfig:
    """Who takes part, how often, and how weights travel."""

    num_clients: int = 4
    rounds: int = 4
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    """Share of clients that evaluate the global model on their held-out split each round."""
    min_clients: int = 1
    """A round starts once this many nodes are connected, and a round with fewer
    successful replies than this stops the run."""
    transport_dtype: TransportDtype = "fp32"
    """Weights on the wire: fp32, fp16 (half the bytes), or bf16 carried bit-exact."""
    client_cpus: float = 1.0
    """CPU cores reserved per simulated client (Ray)."""
    client_gpus: float = 0.0
    """GPU share per simulated client; 0.25 runs four clients on one GPU."""
    round_timeout: float = 3600.0

    def __post_init__(self) -> None:
        _require(
            self.num_clients >= 1, f"federation.num_clients must be >= 1, got {self.num_clients}"
        )
        _require(self.rounds >= 1, f"federation.rounds must be >= 1, got {self.rounds}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"federation.{name} must be in [0, 1], got {value}")
        _require(self.fraction_train > 0, "federation.fraction_train must be > 0")
        _require(
            1 <= self.min_clients <= self.num_clients,
            f"federation.min_clients must be in [1, num_clients={self.num_clients}], "
            f"got {self.min_clients}",
        )
        _require(self.client_cpus > 0, "federation.client_cpus must be > 0")
        _require(self.client_gpus >= 0, "federation.client_gpus must be >= 0")


@dataclass
class TrainConfig:
    """The client's local optimisation: K AdamW steps per round on a cosine schedule."""

    local_steps: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio at the last round's last step."""
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    """Clip of the whole batch gradient's norm (0 turns it off)."""
    eval_batches: int = 8
    """Batches of held-out or validation blocks per evaluation (0: all of them)."""

    def __post_init__(self) -> None:
        _require(self.local_steps >= 1, f"train.local_steps must be >= 1, got {self.local_steps}")
        _require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]")
        _require(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _require(self.grad_clip >= 0, "train.grad_clip must be >= 0")
        _require(self.eval_batches >= 0, "train.eval_batches must be >= 0")


@dataclass
class StrategyConfig:
    """How the server combines the clients' weights."""

    name: Literal["fedavg"] = "fedavg"


@dataclass
class PrivacyConfig:
    """Differential privacy: `off`, sample-level DP-SGD in every client, or user-level DP."""

    mode: Literal["off", "dp_sgd", "user_level"] = "off"
    max_grad_norm: float = 1.0
    """dp_sgd: per-sequence clipping norm. user_level: clipping norm of each client's update."""
    delta: float = 1e-5
    noise_multiplier: float | None = None
    """Noise std / clipping norm. Give this or target_epsilon (dp_sgd), not both."""
    target_epsilon: float | None = None
    """dp_sgd: calibrate the noise so the client's whole planned life spends this epsilon."""
    max_epsilon: float | None = None
    """Budget cap when noise_multiplier is given (target_epsilon is its own cap)."""
    accountant: Literal["prv", "rdp"] = "prv"
    grad_sample_mode: Literal["ghost", "hooks"] = "ghost"
    """ghost: fast (ghost) clipping, less memory; hooks: per-sample gradients, any layer."""
    max_physical_batch: int = 0
    """Split each Poisson batch into chunks of at most this many sequences (0: no split)."""

    def __post_init__(self) -> None:
        if self.mode == "off":
            return
        _require(self.max_grad_norm > 0, "privacy.max_grad_norm must be > 0")
        _require(0 < self.delta < 1, f"privacy.delta must be in (0, 1), got {self.delta}")
        _require(self.max_physical_batch >= 0, "privacy.max_physical_batch must be >= 0")
        given = [k for k in ("noise_multiplier", "target_epsilon") if getattr(self, k) is not None]
        if self.mode == "dp_sgd":
            _require(
                len(given) == 1,
                "privacy: give privacy.target_epsilon or privacy.noise_multiplier, "
                + ("not both" if given else "one of them"),
            )
        else:
            _require(
                self.noise_multiplier is not None and self.target_epsilon is None,
                "privacy=user_level needs privacy.noise_multiplier (and no target_epsilon; "
                "use privacy.max_epsilon to cap the budget)",
            )
        _require(
            self.target_epsilon is None or self.max_epsilon is None,
            "privacy: target_epsilon is the budget already; do not also give max_epsilon",
        )
        for key in ("noise_multiplier", "target_epsilon", "max_epsilon"):
            value = getattr(self, key)
            _require(value is None or value > 0, f"privacy.{key} must be > 0, got {value}")

    @property
    def budget(self) -> float | None:
        """The epsilon a client may spend in its life (None: no cap)."""
        return self.target_epsilon if self.target_epsilon is not None else self.max_epsilon


@dataclass
class ContinualConfig:
    """Continual learning: each client's data arrives as a sequence of experiences.

    `naive` trains on the newest experience only, `replay` mixes in records kept in a
    replay buffer (an Avalanche storage policy) and `cumulative` trains on everything
    seen so far (the upper-bound baseline).
    """

    mode: Literal["off", "naive", "replay", "cumulative"] = "off"
    experiences: int = 3
    """Simulation: how many experiences each client's share of the corpus is cut into."""
    split: Literal["domain", "slice"] = "domain"
    """Simulation: experiences by groups of domains, or by consecutive slices of the text."""
    arrival_every: int | None = None
    """Rounds between arrivals in simulation (None: spread evenly over the rounds);
    0: use every experience folder present in the client's data directory (deployment)."""
    policy: Literal["reservoir", "experience_balanced"] = "reservoir"
    """replay: Avalanche's ReservoirSamplingBuffer or ExperienceBalancedBuffer."""
    buffer_size: int = 256
    """replay: records (blocks) the buffer keeps, as references into the client's data."""
    replay_fraction: float = 0.05
    """replay: the share of each batch drawn from the buffer (expected share under DP)."""
    rewarm: bool = False
    """Re-warm and re-decay the learning rate at each new experience (Ibrahim et al. 2024)."""

    def __post_init__(self) -> None:
        if self.mode == "off":
            return
        _require(
            self.experiences >= 1, f"continual.experiences must be >= 1, got {self.experiences}"
        )
        _require(
            self.arrival_every is None or self.arrival_every >= 0,
            f"continual.arrival_every must be >= 0 (or null), got {self.arrival_every}",
        )
        if self.mode == "replay":
            _require(
                self.buffer_size >= 1,
                f"continual.buffer_size must be >= 1, got {self.buffer_size}",
            )
            _require(
                0.0 < self.replay_fraction < 1.0,
                f"continual.replay_fraction must be in (0, 1), got {self.replay_fraction}",
            )

    def arrival_interval(self, rounds: int) -> int:
        """Rounds between arrivals in simulation: as given, or the rounds spread evenly."""
        if self.arrival_every is not None:
            return self.arrival_every
        return max(rounds // self.experiences, 1)


@dataclass
class TrackingConfig:
    """What the run records besides metrics.jsonl and summary.json."""

    plots: bool = True
    keep_checkpoints: int = 2
    """Round checkpoints kept on disk (the newest ones); resume needs at least 1."""
    wandb: bool = False
    wandb_project: str = "flowerbed"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    verbose: bool = False
    """Show Flower's and Ray's own logs instead of one line per round."""

    def __post_init__(self) -> None:
        _require(self.keep_checkpoints >= 1, "tracking.keep_checkpoints must be >= 1")


@dataclass
class FlowerbedConfig:
    """A whole run: what `flowerbed simulate` composes with Hydra and validates."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    name: str = "default"
    """A label for the run (experiment files set it)."""
    seed: int = 0
    device: DeviceName = "auto"
    """auto: CUDA with bf16 autocast when a GPU is visible, else CPU."""
    resume: str | None = None
    """A run directory to continue from its newest round checkpoint."""

    def __post_init__(self) -> None:
        private = self.privacy.mode == "dp_sgd"
        _require(
            not (
                private and self.privacy.grad_sample_mode == "ghost" and self.model.tie_embeddings
            ),
            "privacy.grad_sample_mode=ghost cannot train tied embeddings: set "
            "model.tie_embeddings=false or privacy.grad_sample_mode=hooks",
        )
        continual = self.continual
        _require(
            continual.mode == "off" or self.federation.fraction_evaluate > 0,
            "continual learning measures forgetting with the clients' held-out losses: "
            "set federation.fraction_evaluate > 0",
        )
        if continual.mode != "off" and continual.arrival_every != 0:
            last_arrival = 1 + (continual.experiences - 1) * continual.arrival_interval(
                self.federation.rounds
            )
            _require(
                last_arrival <= self.federation.rounds,
                f"continual: experience {continual.experiences} would arrive in round "
                f"{last_arrival}, after the last round ({self.federation.rounds}): raise "
                "federation.rounds or lower continual.experiences or continual.arrival_every",
            )
        _require(
            self.privacy.mode != "user_level" or self.federation.transport_dtype == "fp32",
            "privacy=user_level clips and noises updates in fp32: "
            "set federation.transport_dtype=fp32",
        )
