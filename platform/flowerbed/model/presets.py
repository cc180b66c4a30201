"""Size presets for Llama-style causal LMs built from scratch (vocab comes from the tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int = 2048


PRESETS: dict[str, Preset] = {
    "tiny": Preset(hidden=64, layers=2, heads=4, intermediate=176),  # ~0.1M with byte vocab
    "mini": Preset(hidden=128, layers=4, heads=4, intermediate=352),  # ~0.9M: CPU studies
    "small": Preset(hidden=320, layers=8, heads=5, intermediate=864),  # ~10M
    "125m": Preset(hidden=768, layers=12, heads=12, intermediate=2048),
    "350m": Preset(hidden=1024, layers=24, heads=16, intermediate=2816),
    "1b": Preset(hidden=2048, layers=16, heads=32, intermediate=5632),
}
