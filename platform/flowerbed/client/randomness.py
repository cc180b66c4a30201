"""Where a client round's random choices come from: the node's secret, or the run's seed.

Under DP-SGD (`privacy.noise_seed=secret`, the default) the Poisson sample, the blocks a
unit contributes, the replay buffer's draws and the noise are seeded from the node's
secret (`privacy.secret`), keyed by the ledger position of the release, so each release
draws noise of its own: a round re-run after a crash, before its ledger entry, draws
again exactly what it drew, and a re-run after the entry (counted twice) or a later run
of the same node draws afresh. Nobody else can reproduce them.

`privacy.noise_seed=run` seeds them from the run's seed, the round and the partition id,
all known to the server: bit-identical runs for tests and studies, and no privacy
against anyone who knows the run's config. Without DP-SGD there is no guarantee to
protect, and a round's draws come from the run's seed as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowerbed.config import PrivacyConfig
from flowerbed.privacy.modes import privacy_mode
from flowerbed.privacy.secret import NodeSecret


def keeps_noise_secret(privacy: PrivacyConfig) -> bool:
    """Whether the node's DP draws come from its secret (DP-SGD with `noise_seed=secret`)."""
    return privacy_mode(privacy).clients_private and privacy.noise_seed == "secret"


class RunSeeded:
    """Draws anyone who knows the run's seed can repeat: today's numbers, to the bit."""

    private = False

    def __init__(self, seed: int, round_: int, partition_id: int) -> None:
        self.sampler = np.random.default_rng([seed, round_, partition_id])

    def noise_seed(self) -> int:
        """The private trainer's noise seed: the sampler's first draw, before any batch."""
        return int(self.sampler.integers(2**62))


class SecretSeeded:
    """Draws keyed by the node's secret and the release's place in the client's ledger."""

    private = True

    def __init__(self, state_dir: Path, release: int, round_: int) -> None:
        self.secret = NodeSecret.open(state_dir)
        self.release, self.round = release, round_
        self.sampler = self.secret.generator("sample", release, round_)

    def noise_seed(self) -> int:
        return self.secret.torch_seed("noise", self.release, self.round)


def round_randomness(
    privacy: PrivacyConfig, seed: int, round_: int, partition_id: int, state_dir: Path, release: int
) -> RunSeeded | SecretSeeded:
    """The round's draws; `release`: how many rounds the client's ledger holds already."""
    if keeps_noise_secret(privacy):
        return SecretSeeded(state_dir, release, round_)
    return RunSeeded(seed, round_, partition_id)


def buffer_seed(privacy: PrivacyConfig, seed: int, partition_id: int, state_dir: Path) -> list[int]:
    """The seed of the replay buffer's reservoir draws (which records can be replayed): the
    same for the node's whole life, so a rebuilt buffer is the same buffer."""
    if keeps_noise_secret(privacy):
        return NodeSecret.open(state_dir).words("replay buffer")
    return [seed, partition_id]
