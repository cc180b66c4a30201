"""The config sections that hold plain settings: model, data, training, tracking.

Defaults live in `conf/config.yaml` alone (every key, once); these dataclasses give each
key its type and its allowed range (`Annotated[...]`, see `rules`), and `check` names the
key that breaks a rule spanning several fields.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal

from flowerbed.config.rules import Range, Section, at_least, between, positive, require

ModelPreset = Literal["tiny", "mini", "small", "125m", "350m", "1b", "pretrained"]
CorpusName = Literal["stdlib", "synthetic", "files"]
PartitionName = Literal["iid", "domain", "dirichlet"]
TransportDtype = Literal["fp32", "fp16", "bf16"]


@dataclass
class ModelConfig(Section):
    """Which causal LM the federation trains."""

    key = "model"
    preset: ModelPreset
    """Size preset for a model built from scratch, or `pretrained` (load `pretrained`)."""
    pretrained: str | None
    """Local directory or hub name to fine-tune from (for example an earlier final_model);
    when given, it is loaded whatever the preset."""
    tie_embeddings: bool
    """Tie input and output embeddings. Off by default: ghost and bookkeeping clipping
    refuse them."""
    public_base: Literal["none", "stdlib"]
    """`stdlib`: before round 1, pretrain the preset on the built-in public corpus (no
    private text, no privacy spent), cached, and federate from it (`run/public_base.py`);
    `none`: start from the preset's random weights or `pretrained`."""
    public_base_steps: Annotated[int, at_least(1)]
    public_base_batch_size: Annotated[int, at_least(1)]
    public_base_lr: Annotated[float, positive()]

    def check(self) -> None:
        require(
            self.public_base == "none" or not self.pretrained,
            "model.public_base pretrains a base, model.pretrained loads one: give one of them",
        )
        if self.preset == "pretrained":
            needs = "model.pretrained=<a final_model directory or hub name>"
            require(bool(self.pretrained), f"model=pretrained needs {needs}")


@dataclass
class AdapterConfig(Section):
    """Parameter-efficient fine-tuning: LoRA adapters (peft) on a frozen base model."""

    key = "adapter"
    mode: Literal["none", "lora"]
    """`none`: every weight trains and travels; `lora`: only the adapters do."""
    rank: Annotated[int, at_least(1)]
    alpha: Annotated[float, positive()]
    """LoRA's scale is alpha / rank."""
    dropout: Annotated[float, Range(0, 1, high_open=True)]
    target_modules: list[str]
    """Names of the linear layers that get an adapter (the Llama presets' names)."""

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def check(self) -> None:
        require(
            not self.enabled or bool(self.target_modules),
            "adapter.target_modules must name at least one layer, for example [q_proj,v_proj]",
        )


@dataclass
class DataConfig(Section):
    """Where the text comes from, how it becomes blocks, and how clients share it."""

    key = "data"
    corpus: CorpusName
    """Built-in `stdlib` or `synthetic`, or the user's own `files`."""
    paths: list[str]
    """Files or folders for `corpus=files` (.txt, .jsonl, .parquet)."""
    text_field: str
    """Column holding the text in .jsonl and .parquet files."""
    user_field: str | None
    """Column naming each record's user (person, account) in .jsonl and .parquet files,
    for `privacy.unit=user`; null: the top-level folder (or a file given alone) is one user."""
    tokenizer: str
    """`byte` (built in), a path or hub name, or `auto` (the pretrained model's, else byte)."""
    seq_len: Annotated[int, at_least(8)]
    """Tokens per training block."""
    packing: Literal["auto", "stream", "documents"]
    """`stream`: documents joined and cut into blocks; `documents`: no block crosses a
    document (the last one padded), as unit-level DP needs; `auto`: `documents` exactly
    when DP-SGD protects a document or a user."""
    max_chars_per_domain: Annotated[int, positive()]
    """Characters of text read per domain at most. `files`: reading stops at the cap, inside
    a file too; `stdlib`: whole source files are read until the cap is reached."""
    synthetic_domains: Annotated[int, at_least(1)]
    synthetic_docs_per_domain: Annotated[int, at_least(1)]
    synthetic_shift: Annotated[float, between(0, 1)]
    """0: every domain draws from the same words; 1: domains share no words."""
    partition: PartitionName
    dirichlet_alpha: Annotated[float, positive()]
    """Concentration of the Dirichlet skew over domains (smaller is more skewed)."""
    val_fraction: Annotated[float, between(0, 0.5, open_=True)]
    """Share of each domain's blocks held out for the server's validation."""
    heldout_fraction: Annotated[float, between(0, 0.5, open_=True)]
    """Share of each client's blocks it keeps for held-out evaluation."""
    cache_dir: str
    """Where packed blocks are cached so a second run does not tokenize again."""

    def check(self) -> None:
        require(
            self.corpus != "files" or bool(self.paths),
            "data.paths must list at least one file or folder when data.corpus=files",
        )


@dataclass
class TrainConfig(Section):
    """The client's local optimisation: K AdamW steps per round on a cosine schedule."""

    key = "train"
    local_steps: Annotated[int, at_least(1)]
    batch_size: Annotated[int, at_least(1)]
    """Sequences (or, under unit-level DP, expected units) a step; `auto` under DP-SGD,
    with sequences_per_round: the largest leaving 100 steps over the client's life
    (`config/auto_batch.py`, the noise-batch rule), settled when the config is read."""
    lr: Annotated[float, positive()]
    min_lr_ratio: Annotated[float, between(0, 1)]
    """The cosine schedule decays to lr * min_lr_ratio at the last round's last step."""
    warmup_steps: Annotated[int, at_least(0)]
    weight_decay: Annotated[float, at_least(0)]
    grad_clip: Annotated[float, at_least(0)]
    """Clip of the whole batch gradient's norm (0 turns it off)."""
    eval_batches: Annotated[int, at_least(0)]
    """Batches of held-out or validation blocks per evaluation (0: all of them), spread
    evenly over the set."""
    sequences_per_round: Annotated[int | None, at_least(1)]
    """Sequences a client trains on per round; when set, local_steps becomes this divided by
    batch_size, so a sweep over batch_size compares batch sizes at equal tokens."""
    sync_rounds: Annotated[int, at_least(0)]
    """Synchronous warm start: the first this many rounds take one local step each and the
    server averages them without its outer step, so the federation begins as data-parallel
    training (DiLoCo's warm start); the rounds after take local_steps each."""
    dp_adam_bias_correction: bool
    """Under DP-SGD, AdamW's second moment without the noise's variance (σC/B)²
    (`privacy/dp_adam.py`); no effect without DP."""

    def steps_in(self, round_: int) -> int:
        """Local steps of round `round_` (1-based)."""
        return 1 if round_ <= self.sync_rounds else self.local_steps

    def steps_before(self, round_: int) -> int:
        """Local steps of the rounds before round `round_`: where it starts on the schedule."""
        synchronous = min(round_ - 1, self.sync_rounds)
        return synchronous + (round_ - 1 - synchronous) * self.local_steps

    def in_round(self, round_: int) -> TrainConfig:
        """This config as round `round_` trains it: `local_steps` is that round's steps."""
        return replace(self, local_steps=self.steps_in(round_), sequences_per_round=None)

    def check(self) -> None:
        if self.sequences_per_round is None:
            return
        require(
            self.sequences_per_round % self.batch_size == 0,
            f"train.sequences_per_round={self.sequences_per_round} is not a multiple of "
            f"train.batch_size={self.batch_size}: choose values where it is, so every round "
            "trains exactly that many sequences",
        )
        self.local_steps = self.sequences_per_round // self.batch_size


@dataclass
class StrategyConfig(Section):
    """How the server combines the clients' weights."""

    key = "strategy"
    name: Literal["fedavg", "fedavgm", "diloco", "fedadam"]
    """The outer step on the clients' mean update (server/outer.py says each rule)."""
    outer_lr: Annotated[float, positive()]
    outer_momentum: Annotated[float, Range(0, 1, high_open=True)]
    """Momentum of fedavgm and diloco; Adam's beta1 for fedadam."""
    outer_beta2: Annotated[float, Range(0, 1, high_open=True)]
    outer_tau: Annotated[float, positive()]
    """fedadam's epsilon: the update is m / (sqrt(v) + tau)."""
    keep_inner_state: bool
    """Each client keeps its AdamW moments between rounds (in its state directory)."""


@dataclass
class TrackingConfig(Section):
    """What the run records besides metrics.jsonl and summary.json."""

    key = "tracking"
    plots: bool
    keep_checkpoints: Annotated[int, at_least(1)]
    """Round checkpoints kept on disk (the newest ones); resume needs at least 1."""
    wandb: bool
    wandb_project: str
    wandb_mode: Literal["offline", "online", "disabled"]
    wandb_group: str | None
    """W&B group; the jobs of one sweep share one named after the sweep unless this is set."""
    verbose: bool
    """Show Flower's and Ray's own logs instead of one line per round."""
    progress: bool
    """A live line on a terminal while a round waits for its clients (never in a log)."""
