"""The banded mechanism's noise at run time: `C⁻¹z`, one step at a time, kept across rounds.

With C lower-triangular Toeplitz with coefficients c₀..c_{b-1} (`banded.py`), the noise
w = C⁻¹z solves C w = z, so step t's noise is

    w_t = (z_t - c₁ w_{t-1} - ... - c_{b-1} w_{t-b+1}) / c₀,

z_t being the step's fresh standard Gaussian draw (from the release's secret key, as
DP-SGD's); the step's gradient gets σC·w_t. The kept noise is at unit scale, not σC:
the mechanism runs on the clipped sums divided by the round's clipping norm C (each of
sensitivity 1), and scaling by C is post-processing, so a coordinator that lowers
`privacy.max_grad_norm` from one round to the next cannot make a round's rows carry the
last round's gradients under smaller noise (it could with noise kept at σC).
Only the last b - 1 noise vectors are needed: they stay in the node's state directory
between rounds (`correlated-noise/round-<r>.safetensors`, mode 0600, written atomically,
never sent), because the mechanism runs over the client's whole life, not one round. A
round reads the newest file written before it, as the kept AdamW moments are read, so a
round re-run after a crash, or a run resumed from an earlier checkpoint, draws exactly
the noise it drew; a file that does not end at the ledger's last release is not used
(`CorrelatedNoise.resume` says why). On several ranks every rank holds the same buffers
and the same draw, so the node's noise is the same on all of them; rank 0 saves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load, save

from flowerbed.atomic import write_atomic
from flowerbed.privacy.banded import check_coefficients

FOLDER = "correlated-noise"
KEEP = 2
log = logging.getLogger("flowerbed")


class CorrelatedNoiseError(ValueError):
    """The kept buffers do not fit this model or strategy; the message says what to do."""


class CorrelatedNoise:
    """Turns each step's fresh draw z_t into w_t in place, remembering the last b - 1.

    The kept noise is one [b - 1, n] ring, so the weighted sum of all of it is one
    matrix-vector product over the ring (one pass over memory, not b - 1).
    """

    def __init__(
        self,
        coefficients: Sequence[float],
        history: list[torch.Tensor] | None = None,
        classes: str = "",
    ) -> None:
        check_coefficients(coefficients)
        self.coefficients = [float(c) for c in coefficients]
        self.classes = classes
        """A fingerprint of the sampling cycle's key the kept noise was made under."""
        self._loaded = history or []
        """The previous steps' noise, newest first, until the first step fills the ring."""
        self._ring: torch.Tensor | None = None
        self._newest, self._filled = -1, 0

    @property
    def bands(self) -> int:
        return len(self.coefficients)

    @property
    def history(self) -> list[torch.Tensor]:
        """The previous steps' noise, newest first (at most bands - 1 of them)."""
        if self._ring is None:
            return self._loaded
        slots = self.bands - 1
        return [self._ring[(self._newest - j) % slots] for j in range(self._filled)]

    def shape_(self, noise: torch.Tensor) -> torch.Tensor:
        """z_t → w_t, in place; `noise` is the step's whole flat draw."""
        if self.bands > 1:
            ring = self._ring_like(noise)
            weights = torch.zeros(self.bands - 1, dtype=noise.dtype)
            for j in range(self._filled):  # w_{t-1-j} sits in slot newest - j
                weights[(self._newest - j) % (self.bands - 1)] = self.coefficients[j + 1]
            noise.addmv_(ring.t(), weights.to(noise.device), alpha=-1)
        if self.coefficients[0] != 1.0:
            noise.div_(self.coefficients[0])
        if self.bands > 1:
            self._newest = (self._newest + 1) % (self.bands - 1)
            ring[self._newest].copy_(noise)
            self._filled = min(self._filled + 1, self.bands - 1)
        return noise

    def _ring_like(self, noise: torch.Tensor) -> torch.Tensor:
        """The ring on the noise's device, holding what was loaded (zeros elsewhere)."""
        if self._ring is None:
            if self._loaded and self._loaded[0].numel() != noise.numel():
                raise CorrelatedNoiseError(
                    f"the kept correlated noise has {self._loaded[0].numel()} values, this "
                    f"model trains {noise.numel()} parameters: a node's model must keep its "
                    "trainable parameters for life under privacy.mechanism=banded"
                )
            self._ring = noise.new_zeros((self.bands - 1, noise.numel()))
            for j, earlier in enumerate(reversed(self._loaded)):  # oldest first
                self._ring[j].copy_(earlier.view(-1))
            self._newest, self._filled = len(self._loaded) - 1, len(self._loaded)
            self._loaded = []
        return self._ring

    @classmethod
    def resume(
        cls,
        coefficients: Sequence[float],
        state_dir: Path,
        round_: int,
        after: str,
        classes: str = "",
    ) -> CorrelatedNoise:
        """The buffers the node saved before `round_`, if they hold the noise up to the
        release `after` (the ledger's entry before this one) and were made with the same
        sampling classes (`classes`: a fingerprint of the cycle's key); else none, with a
        warning.

        Buffers older than the last release (a restored backup, a crash between the
        update leaving and the save) would correlate fresh noise with noise that already
        left a second time, and buffers made under other classes (a new node secret, a
        changed seed) would let a record that moved class take part twice within a band:
        neither is covered by the accounting. Empty buffers start a new banded mechanism
        instead, whose steps the ledger counts as it counts all.
        """
        earlier = [(r, p) for r, p in _files(state_dir) if r < round_]
        tensors = load(earlier[-1][1].read_bytes()) if earlier else {}
        kept_after = bytes(tensors["release"].tolist()).decode() if tensors else ""
        if not tensors or kept_after != f"{after}/{classes}":
            if after:
                log.warning(
                    "the correlated noise kept in %s ends at another release, or was made "
                    "with other sampling classes, than this round's: the banded noise "
                    "starts again from empty buffers",
                    state_dir / FOLDER,
                )  # fmt: skip
            return cls(coefficients, classes=classes)
        if tensors["coefficients"].tolist() != [float(c) for c in coefficients]:
            raise CorrelatedNoiseError(
                f"{earlier[-1][1]} was kept for another strategy: the ledger fixes a node's "
                "strategy for life; restore the state directory whole"
            )
        history = [tensors[f"noise/{i}"] for i in range(len(tensors) - 2)]
        return cls(coefficients, history, classes)

    def save(self, state_dir: Path, round_: int, release: str) -> None:
        """Write the buffers after `round_` (whose release is `release`, the ledger's
        nonce), then drop all but the newest files."""
        tensors = {f"noise/{i}": w.detach().cpu().contiguous() for i, w in enumerate(self.history)}
        tensors["coefficients"] = torch.tensor(self.coefficients, dtype=torch.float64)
        lineage = f"{release}/{self.classes}".encode()
        tensors["release"] = torch.tensor(list(lineage), dtype=torch.uint8)
        path = state_dir / FOLDER / f"round-{round_:05d}.safetensors"
        write_atomic(path, save(tensors), durable=True, private=True)
        for _, old in _files(state_dir)[:-KEEP]:
            old.unlink()


def _files(state_dir: Path) -> list[tuple[int, Path]]:
    folder = state_dir / FOLDER
    return sorted((int(p.stem.split("-")[1]), p) for p in folder.glob("round-*.safetensors"))
