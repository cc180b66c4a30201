"""torch's CPU generator with its whole state keyed: the one place its byte layout is read.

torch's CPU generator is a Mersenne Twister whose seed keeps 32 bits (seeds s, s mod 2^32
and s xor 2^40 give the same draws), so whoever can enumerate 2^32 seeds can repeat any
draw seeded that way. Code we do not own draws from it, Avalanche's reservoir sampling
(`torch.rand`) among them; instead of a seed we give it a whole state, its 624 words taken
from a keystream (`flowerbed.keystream`): 19,968 bits, none of them guessable.

`Generator.set_state` is public, its byte layout is not: the legacy layout (a 64-bit seed,
`left`, `seeded`, `next`, then 624 words each in 64 bits) is what torch 2.x reads and
writes; `tests/test_torch_generator.py` fails if a new torch changes it.
"""

from __future__ import annotations

import numpy as np
import torch

from flowerbed.keystream import KeyStream

WORDS = 624
"""MT19937's state: 624 words of 32 bits."""
_HEADER = 24
"""Bytes before the state words: seed (8), left (4), seeded (4), next (8)."""
_SIZE = 5056
"""The whole state's bytes in torch 2.x."""


def keyed_state(stream: KeyStream) -> torch.Tensor:
    """A CPU generator state (for `torch.set_rng_state`) whose 624 words come from `stream`,
    due to be stirred (twisted) before its first draw."""
    state = torch.Generator().get_state().numpy().copy()
    if state.size != _SIZE:
        raise RuntimeError(
            f"torch {torch.__version__}'s CPU generator state is {state.size} bytes, not "
            f"{_SIZE}: flowerbed.torch_generator needs updating for it"
        )
    header = np.zeros(3, dtype="<u8")
    header[1] = 1 | 1 << 32  # left = 1, seeded = 1: the next draw twists the state first
    state[:_HEADER] = header.view(np.uint8)
    words = stream.words(WORDS).astype("<u8")
    state[_HEADER : _HEADER + 8 * WORDS] = words.view(np.uint8)
    return torch.from_numpy(state)
