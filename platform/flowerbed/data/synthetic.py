"""The `synthetic` corpus: generated multi-domain text with a controllable domain shift.

Each domain has its own words (built from its own syllables) and its own word-successor
table; a shared vocabulary and table are common to all. Every word is drawn from the
domain's own material with probability `shift`, else from the shared one, so `shift=0`
gives identically distributed domains and `shift=1` gives domains that share nothing.
The text is learnable (successor tables) and cheap, which makes it the corpus for tests.
"""

from __future__ import annotations

import numpy as np

from flowerbed.data.documents import Domain

CONSONANTS = "bcdfghjklmnpqrstvwxz"
VOWELS = "aeiouy"
WORDS_PER_VOCABULARY = 120


def _vocabulary(rng: np.random.Generator, consonants: str) -> list[str]:
    words: set[str] = set()
    while len(words) < WORDS_PER_VOCABULARY:
        syllables = rng.integers(1, 4)
        words.add(
            "".join(
                rng.choice(list(consonants)) + rng.choice(list(VOWELS)) for _ in range(syllables)
            )
        )
    return sorted(words)


class _Source:
    """A vocabulary with Zipf frequencies and a fixed successor for every word."""

    def __init__(self, rng: np.random.Generator, consonants: str) -> None:
        self.words = _vocabulary(rng, consonants)
        ranks = np.arange(1, len(self.words) + 1)
        self.probs = (1.0 / ranks) / (1.0 / ranks).sum()
        self.successor = rng.integers(0, len(self.words), size=len(self.words))

    def draw(self, rng: np.random.Generator, previous: int | None) -> int:
        if previous is not None and rng.random() < 0.6:
            return int(self.successor[previous % len(self.words)])
        return int(rng.choice(len(self.words), p=self.probs))


def synthetic_domains(
    num_domains: int, docs_per_domain: int, shift: float, seed: int = 0
) -> list[Domain]:
    """Generate `num_domains` domains of `docs_per_domain` documents each, deterministically."""
    rng = np.random.default_rng(seed)
    shared = _Source(rng, CONSONANTS)
    domains = []
    for d in range(num_domains):
        window = 5
        start = (d * 7) % len(CONSONANTS)
        own_consonants = (CONSONANTS * 2)[start : start + window]
        own = _Source(np.random.default_rng([seed, d + 1]), own_consonants)
        doc_rng = np.random.default_rng([seed, d + 1, 7])
        documents = [_document(doc_rng, shared, own, shift) for _ in range(docs_per_domain)]
        domains.append(Domain(f"domain{d}", documents, f"synthetic domain {d}"))
    return domains


def _document(rng: np.random.Generator, shared: _Source, own: _Source, shift: float) -> str:
    sentences = []
    for _ in range(int(rng.integers(3, 8))):
        words, previous, source = [], None, shared
        for _ in range(int(rng.integers(6, 14))):
            source = own if rng.random() < shift else shared
            previous = source.draw(rng, previous)
            words.append(source.words[previous])
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences) + "\n"
