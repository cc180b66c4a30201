"""Where everything of a run lives on disk, so every writer and reader agrees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        """Validation blocks and the tokenizer (server side)."""
        return self.root / "data"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    @property
    def clients(self) -> Path:
        """One folder per simulated client: `client-<i>/data` (its shard), `client-<i>/state`."""
        return self.root / "clients"

    def client_data(self, partition_id: int) -> Path:
        return self.clients / f"client-{partition_id}" / "data"

    def client_state(self, partition_id: int) -> Path:
        return self.clients / f"client-{partition_id}" / "state"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def final_model(self) -> Path:
        return self.root / "final_model"

    @property
    def initial_val_loss(self) -> Path:
        """The round-0 validation loss, kept so a resumed run's summary still has it."""
        return self.root / "initial_val_loss.json"

    @property
    def val_loss_plot(self) -> Path:
        return self.root / "val_loss.png"

    @property
    def epsilon_plot(self) -> Path:
        return self.root / "privacy_epsilon.png"

    @property
    def loss_matrix_plot(self) -> Path:
        return self.root / "loss_matrix.png"
