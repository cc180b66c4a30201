"""Where a client round's random choices come from: the node's secret, or the run's seed.

Under DP-SGD (`privacy.noise_seed=secret`, the default) the Poisson sample, the blocks a
unit contributes and the noise are keyed by the node's secret (`privacy.secret`) and the
release's nonce, which the ledger writes ahead before anything is drawn: each release
draws its own, a round re-run after a crash (the same request, its entry still pending)
draws again exactly what it drew, and nobody else can reproduce any of it. The replay
buffer's reservoir is keyed by the secret for the node's whole life (a rebuilt buffer is
the same buffer).

`privacy.noise_seed=run` seeds them from the run's seed, the round and the partition id,
all known to the server: bit-identical runs for tests and studies, and no privacy
against anyone who knows the run's config. Without DP-SGD there is no guarantee to
protect, and a round's draws come from the run's seed as well.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from flowerbed.config import PrivacyConfig
from flowerbed.privacy.modes import privacy_mode
from flowerbed.privacy.secret import NodeSecret
from flowerbed.privacy.secret_noise import NoiseKey
from flowerbed.torch_generator import keyed_state


def keeps_noise_secret(privacy: PrivacyConfig) -> bool:
    """Whether the node's DP draws come from its secret (DP-SGD with `noise_seed=secret`)."""
    return privacy_mode(privacy).clients_private and privacy.noise_seed == "secret"


class RunSeeded:
    """Draws anyone who knows the run's seed can repeat: today's numbers, to the bit."""

    private = False

    def __init__(self, seed: int, round_: int, partition_id: int) -> None:
        self.sampler = np.random.default_rng([seed, round_, partition_id])
        self.cycle_key = hashlib.sha256(f"cycle/{seed}/{partition_id}".encode()).digest()
        """The classes of banded noise's sampling cycle: the same every round."""

    def noise(self) -> NoiseKey:
        """The private trainer's noise seed: the sampler's first draw, before any batch."""
        return NoiseKey(seed=int(self.sampler.integers(2**62)))


class SecretSeeded:
    """Draws keyed by the node's secret and the release's nonce."""

    private = True

    def __init__(self, state_dir: Path, nonce: str) -> None:
        secret = NodeSecret.open(state_dir)
        self.sampler = secret.generator("sample", nonce)
        self._noise = NoiseKey(key=secret.digest("noise", nonce))
        self.cycle_key = secret.digest("cycle")
        """The classes of banded noise's sampling cycle: the node's, for life."""

    def noise(self) -> NoiseKey:
        return self._noise


def round_randomness(
    privacy: PrivacyConfig,
    seed: int,
    round_: int,
    partition_id: int,
    state_dir: Path,
    nonce: str | None,
) -> RunSeeded | SecretSeeded:
    """The round's draws; `nonce`: the release's, from the ledger (DP-SGD)."""
    if keeps_noise_secret(privacy):
        assert nonce, "a secret draw needs the release's nonce from the ledger"
        return SecretSeeded(state_dir, nonce)
    return RunSeeded(seed, round_, partition_id)


class RunReservoir:
    """The replay buffer's reservoir draws from the run's seed (torch's 32-bit seeding)."""

    def __init__(self, words: list[int]) -> None:
        self.words = words

    def torch_state(self, experience: int) -> torch.Tensor:
        seed = int(np.random.SeedSequence([*self.words, experience]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed).get_state()


class SecretReservoir:
    """The replay buffer's reservoir draws from the node's secret: a whole generator state."""

    def __init__(self, secret: NodeSecret) -> None:
        self.secret = secret

    def torch_state(self, experience: int) -> torch.Tensor:
        return keyed_state(self.secret.stream("replay buffer", experience))


def reservoir_draws(
    privacy: PrivacyConfig, seed: int, partition_id: int, state_dir: Path
) -> RunReservoir | SecretReservoir:
    """The draws of the replay buffer's reservoir (which records can be replayed): the same
    for the node's whole life, so a rebuilt buffer is the same buffer."""
    if keeps_noise_secret(privacy):
        return SecretReservoir(NodeSecret.open(state_dir))
    return RunReservoir([seed, partition_id])
