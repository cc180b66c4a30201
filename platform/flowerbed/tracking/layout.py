"""Where everything of a run lives on disk, so every writer and reader agrees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class _Under:
    """A path below the run directory, read as an attribute: `layout.metrics`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, layout: RunLayout, owner: type | None = None) -> Path:
        return layout.root.joinpath(*self.parts)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    config = _Under("config.yaml")  # the resolved config the run used
    data = _Under("data")  # validation blocks and the tokenizer (server side)
    tokenizer = _Under("data", "tokenizer")
    clients = _Under("clients")  # client-<i>/data (its shard) and client-<i>/state
    checkpoints = _Under("checkpoints")
    metrics = _Under("metrics.jsonl")
    summary = _Under("summary.json")
    final_model = _Under("final_model")  # Hugging Face format (adapters merged in)
    final_adapter = _Under("final_adapter")  # adapter=lora: PEFT format
    initial_val_loss = _Under("initial_val_loss.json")  # kept for a resumed run's summary
    val_loss_plot = _Under("val_loss.png")
    epsilon_plot = _Under("privacy_epsilon.png")
    loss_matrix_plot = _Under("loss_matrix.png")

    def client_data(self, partition_id: int) -> Path:
        return self.clients / f"client-{partition_id}" / "data"

    def client_state(self, partition_id: int) -> Path:
        return self.clients / f"client-{partition_id}" / "state"
