"""`flowerbed privacy recommend`: the noise-batch recipe for a client's token budget."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from flowerbed.privacy.recipe import MIN_STEPS, recommend


def recipe_settings(
    parser: argparse.ArgumentParser, units: Callable[[argparse.ArgumentParser], None]
) -> None:
    """`recommend`'s flags, after the `units` flags every privacy command shares."""
    units(parser)
    parser.add_argument(
        "--target-epsilon", type=float, required=True, help="the ε the client's whole life spends"
    )
    parser.add_argument(
        "--tokens", type=int, required=True, help="tokens the client trains on over its life"
    )
    parser.add_argument(
        "--seq-len", type=int, default=128, help="tokens a block holds (default: %(default)s)"
    )
    parser.add_argument(
        "--blocks-per-unit",
        type=float,
        default=1.0,
        help="blocks a drawn unit gives a step, on average (documents, users; default: 1)",
    )
    parser.add_argument(
        "--min-steps",
        type=int,
        default=MIN_STEPS,
        help="the fewest steps over the client's life (default: %(default)s)",
    )


def _recipe_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `recommend`'s settings, in a sentence (None: nothing)."""
    counts = {"--units": args.units, "--tokens": args.tokens, "--seq-len": args.seq_len}
    counts["--min-steps"] = args.min_steps
    for flag, value in counts.items():
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.blocks_per_unit < 1 or (args.unit == "sequence" and args.blocks_per_unit != 1):
        return (
            f"--blocks-per-unit must be 1 for sequences and at least 1 for documents or "
            f"users (the blocks a drawn unit gives a step), got {args.blocks_per_unit:g}"
        )
    if not 0 < args.delta < 1:
        return f"--delta must be between 0 and 1 (exclusive), got {args.delta:g}"
    if not args.target_epsilon > 0:
        return f"--target-epsilon must be > 0, got {args.target_epsilon:g}"
    return None


def recommend_batch(args: argparse.Namespace) -> None:
    """Print the batches weighed and the one recommended, or exit with what is wrong."""
    problem = _recipe_problem(args)
    if problem:
        raise SystemExit(f"flowerbed privacy recommend: {problem}")
    drawn = int(args.tokens / (args.seq_len * args.blocks_per_unit))
    try:
        recipe = recommend(
            args.units,
            drawn,
            args.target_epsilon,
            args.delta,
            args.accountant,
            args.min_steps,
        )
    except ValueError as error:
        raise SystemExit(f"flowerbed privacy recommend: {error}") from None
    print(f"{drawn:,} {args.unit}s drawn over the client's life, ε {args.target_epsilon:g}:")
    print("| batch | steps | noise σ | σ / batch |")
    print("|---|---|---|---|")
    for batch, candidate in recipe.candidates:
        print(
            f"| {batch} | {candidate.steps} | {candidate.noise_multiplier:.6g} | "
            f"{candidate.noise_multiplier / batch:.4g} |"
        )
    chosen = recipe.chosen
    print(
        f"recommended: train.batch_size={recipe.batch_size}, {chosen.steps} steps over the "
        f"client's life (train.local_steps = {chosen.steps} / rounds), noise σ "
        f"{chosen.noise_multiplier:.6g}: the lowest noise per {args.unit} in the mean gradient "
        f"(σ/B {recipe.noise_batch_ratio:.4g}) that still leaves {args.min_steps} steps"
    )
    print(
        "σ is for a client whose units are all there from the start, without replay: each "
        "client calibrates its own from its ledger and its data (replay and new experiences "
        "raise the rate a unit is drawn at)"
    )
