"""How far apart honest clients' claims lie: the evidence behind the factor of
`federation.max_examples_per_client=auto` (docs/robustness.md, "Safe defaults").

Without DP a client claims its training records as its aggregation weight. For each
partition the experiments use (seeds 0-2), this cuts the shards as a run would and prints,
over every set of clients a round may sample, the largest ratio of the largest claim to the
round's lower median (what a multiple of the median compares) and to the next largest claim
(what `auto` compares: a claim counts up to `examples_factor` times the largest other
claim), and the share of those rounds in which an honest claim would be capped.

    uv run python simulations/robustness/honest_claims.py
"""

from __future__ import annotations

import itertools

from flowerbed.config import compose_config
from flowerbed.data import load_tokenizer, prepare_splits

PARTITIONS = {
    "robustness, IID": ["experiment=robustness"],
    "robustness, by domain": ["experiment=robustness", "data.partition=domain"],
    "robustness, Dirichlet(0.5)": ["experiment=robustness", "data.partition=dirichlet"],
    "synthetic_dirichlet, Dirichlet(0.3), 4 of 8": ["experiment=synthetic_dirichlet"],
    "stdlib_by_domain, 5 clients": ["experiment=stdlib_by_domain"],
    "default, IID": ["continual=off"],
    "default, by domain": ["continual=off", "data.partition=domain"],
    "default, Dirichlet(0.5)": ["continual=off", "data.partition=dirichlet"],
    "smoke, 2 clients": ["experiment=smoke", "continual=off"],
}


def lower_median(values: tuple[int, ...]) -> int:
    return sorted(values)[(len(values) - 1) // 2]


def spread(overrides: list[str], seed: int) -> tuple[list[int], float, float, float]:
    """The clients' claims; the worst round's max / lower median and max / next; the share
    of rounds in which the largest claim is capped."""
    cfg = compose_config(*overrides, f"seed={seed}")
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.model.pretrained)
    splits = prepare_splits(cfg.data, tokenizer, cfg.federation.num_clients, cfg.seed)
    claims = [len(shards[0].train) for shards in splits.clients]
    rounds = list(itertools.combinations(claims, cfg.clients_per_round))
    to_median = max(max(r) / lower_median(r) for r in rounds)
    to_next = [sorted(r)[-1] / sorted(r)[-2] for r in rounds]
    capped = sum(ratio > cfg.federation.examples_factor for ratio in to_next) / len(rounds)
    return claims, to_median, max(to_next), capped


def main() -> None:
    print("| partition | seed | claims | max / lower median | max / next | rounds capped |")
    print("|---|---|---|---|---|---|")
    for name, overrides in PARTITIONS.items():
        for seed in (0, 1, 2):
            claims, to_median, to_next, capped = spread(overrides, seed)
            row = f"| {name} | {seed} | {claims} | {to_median:.2f} | {to_next:.2f} | {capped:.0%} |"
            print(row)


if __name__ == "__main__":
    main()
