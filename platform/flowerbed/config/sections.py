"""The config sections that hold plain settings: model, data, federation, training, tracking.

Defaults live in `conf/config.yaml` alone (every key, once); these dataclasses give each
key its type and its rule, and `__post_init__` names the key that breaks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelPreset = Literal["tiny", "small", "125m", "350m", "1b", "pretrained"]
CorpusName = Literal["stdlib", "synthetic", "files"]
PartitionName = Literal["iid", "domain", "dirichlet"]
TransportDtype = Literal["fp32", "fp16", "bf16"]


class SchemaError(ValueError):
    """A value breaks a rule of the schema; the message names the key."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise SchemaError(message)


@dataclass
class ModelConfig:
    """Which causal LM the federation trains."""

    preset: ModelPreset
    """Size preset for a model built from scratch, or `pretrained` (load `pretrained`)."""
    pretrained: str | None
    """Local directory or hub name to fine-tune from (for example an earlier final_model);
    when given, it is loaded whatever the preset."""
    tie_embeddings: bool
    """Tie input and output embeddings. Off by default: Opacus ghost clipping refuses them."""

    def __post_init__(self) -> None:
        require(
            self.preset != "pretrained" or bool(self.pretrained),
            "model=pretrained needs model.pretrained=<a final_model directory or hub name>",
        )


@dataclass
class DataConfig:
    """Where the text comes from, how it becomes blocks, and how clients share it."""

    corpus: CorpusName
    """Built-in `stdlib` or `synthetic`, or the user's own `files`."""
    paths: list[str]
    """Files or folders for `corpus=files` (.txt, .jsonl, .parquet)."""
    text_field: str
    """Column holding the text in .jsonl and .parquet files."""
    tokenizer: str
    """`byte` (built in), a path or hub name, or `auto` (the pretrained model's, else byte)."""
    seq_len: int
    """Tokens per training block."""
    max_chars_per_domain: int
    """Characters of text read per domain at most. `files`: reading stops at the cap, inside
    a file too; `stdlib`: whole source files are read until the cap is reached."""
    synthetic_domains: int
    synthetic_docs_per_domain: int
    synthetic_shift: float
    """0: every domain draws from the same words; 1: domains share no words."""
    partition: PartitionName
    dirichlet_alpha: float
    """Concentration of the Dirichlet skew over domains (smaller is more skewed)."""
    val_fraction: float
    """Share of each domain's blocks held out for the server's validation."""
    heldout_fraction: float
    """Share of each client's blocks it keeps for held-out evaluation."""
    cache_dir: str
    """Where packed blocks are cached so a second run does not tokenize again."""

    def __post_init__(self) -> None:
        require(self.seq_len >= 8, f"data.seq_len must be >= 8, got {self.seq_len}")
        require(
            self.corpus != "files" or bool(self.paths),
            "data.paths must list at least one file or folder when data.corpus=files",
        )
        for name in ("val_fraction", "heldout_fraction"):
            value = getattr(self, name)
            require(0.0 < value < 0.5, f"data.{name} must be in (0, 0.5), got {value}")
        require(
            0.0 <= self.synthetic_shift <= 1.0,
            f"data.synthetic_shift must be in [0, 1], got {self.synthetic_shift}",
        )
        require(self.dirichlet_alpha > 0, "data.dirichlet_alpha must be > 0")
        require(self.synthetic_domains >= 1, "data.synthetic_domains must be >= 1")
        require(self.max_chars_per_domain > 0, "data.max_chars_per_domain must be > 0")


@dataclass
class FederationConfig:
    """Who takes part, how often, and how weights travel."""

    num_clients: int
    rounds: int
    fraction_train: float
    fraction_evaluate: float
    """Share of clients that evaluate the global model on their held-out split each round."""
    min_clients: int
    """A round starts once this many nodes are connected, and a round with fewer
    successful replies than this stops the run."""
    transport_dtype: TransportDtype
    """Weights on the wire: fp32, fp16 (half the bytes), or bf16 carried bit-exact."""
    client_cpus: float
    """CPU cores reserved per simulated client (Ray)."""
    client_gpus: float
    """GPU share per simulated client; 0.25 runs four clients on one GPU."""
    round_timeout: float

    def __post_init__(self) -> None:
        require(
            self.num_clients >= 1, f"federation.num_clients must be >= 1, got {self.num_clients}"
        )
        require(self.rounds >= 1, f"federation.rounds must be >= 1, got {self.rounds}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"federation.{name} must be in [0, 1], got {value}")
        require(self.fraction_train > 0, "federation.fraction_train must be > 0")
        require(
            1 <= self.min_clients <= self.num_clients,
            f"federation.min_clients must be in [1, num_clients={self.num_clients}], "
            f"got {self.min_clients}",
        )
        require(self.client_cpus > 0, "federation.client_cpus must be > 0")
        require(self.client_gpus >= 0, "federation.client_gpus must be >= 0")


@dataclass
class TrainConfig:
    """The client's local optimisation: K AdamW steps per round on a cosine schedule."""

    local_steps: int
    batch_size: int
    lr: float
    min_lr_ratio: float
    """The cosine schedule decays to lr * min_lr_ratio at the last round's last step."""
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    """Clip of the whole batch gradient's norm (0 turns it off)."""
    eval_batches: int
    """Batches of held-out or validation blocks per evaluation (0: all of them)."""

    def __post_init__(self) -> None:
        require(self.local_steps >= 1, f"train.local_steps must be >= 1, got {self.local_steps}")
        require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]")
        require(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        require(self.grad_clip >= 0, "train.grad_clip must be >= 0")
        require(self.eval_batches >= 0, "train.eval_batches must be >= 0")


@dataclass
class StrategyConfig:
    """How the server combines the clients' weights."""

    name: Literal["fedavg"]


@dataclass
class TrackingConfig:
    """What the run records besides metrics.jsonl and summary.json."""

    plots: bool
    keep_checkpoints: int
    """Round checkpoints kept on disk (the newest ones); resume needs at least 1."""
    wandb: bool
    wandb_project: str
    wandb_mode: Literal["offline", "online", "disabled"]
    verbose: bool
    """Show Flower's and Ray's own logs instead of one line per round."""

    def __post_init__(self) -> None:
        require(self.keep_checkpoints >= 1, "tracking.keep_checkpoints must be >= 1")
