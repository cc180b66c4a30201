"""The config sections for faulty and hostile clients: the combiner, and simulated faults.

`combiner` says how the server turns the admitted updates into one (the registry in
`flowerbed.server.combiners`); `faults` makes chosen simulated clients misbehave, for
tests and studies (a deployment refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from flowerbed.config.rules import Range, Section, at_least, require

CombinerName = Literal["mean", "trimmed_mean", "median", "krum", "multikrum"]
FaultKind = Literal[
    "none",
    "non_finite",
    "scaled",
    "sign_flip",
    "wrong_shape",
    "inflated_examples",
    "random",
    "crash",
    "rank_crash",
]


@dataclass
class CombinerConfig(Section):
    """How the admitted updates become one: the weighted mean, or a robust combiner."""

    key = "combiner"
    name: CombinerName
    """mean (weighted by the admitted examples), trimmed_mean, median (coordinate-wise),
    krum or multikrum (the updates closest to their neighbours)."""
    trim_fraction: Annotated[float, Range(0, 0.5, high_open=True)]
    """trimmed_mean: the share of values cut at each end of every coordinate."""
    faulty_clients: Annotated[int, at_least(0)]
    """krum, multikrum, median: how many hostile clients a round must tolerate (f)."""
    selected: Annotated[int | None, at_least(1)]
    """multikrum: how many of the best-scored updates to average (null: n - f)."""


@dataclass
class FaultsConfig(Section):
    """Simulation only: chosen clients send a faulty or hostile reply every round."""

    key = "faults"
    kind: FaultKind
    """non_finite (NaN in the weights; Hydra reads a bare `nan` as a number), scaled (the
    update x `scale`; a negative scale flips it too: `scale=-1e4` is a sign flip x 1e4),
    sign_flip (the update negated), wrong_shape (a tensor cut short),
    inflated_examples (the weight x `scale`), random (Gaussian noise `scale` times the
    update's size in its place), crash (the client dies when asked to train), rank_crash
    (rank 1 of the client's round is killed; needs federation.ranks_per_client >= 2)."""
    clients: list[int]
    """The partition ids that misbehave."""
    scale: float
    """scaled: the factor on the update (any sign); inflated_examples, random: > 0."""

    def check(self) -> None:
        require(
            self.kind == "scaled" or self.scale > 0,
            f"faults.scale must be > 0 for faults={self.kind}, got {self.scale} (only "
            "faults=scaled takes a negative scale, which flips the update as well)",
        )

    @property
    def enabled(self) -> bool:
        return self.kind != "none" and bool(self.clients)
