"""`flowerbed privacy`: plan a budget with the same code the clients train with.

Examples (a client with 20,000 blocks, batch 16, 20 rounds of 50 local steps; or 1,500
documents, 8 of them a step):

    flowerbed privacy noise --units 20000 --batch-size 16 --rounds 20 \
        --local-steps 50 --target-epsilon 8
    flowerbed privacy epsilon --units 1500 --unit document --batch-size 8 --rounds 20 \
        --local-steps 50 --noise-multiplier 1.0
    flowerbed privacy recommend --units 2700 --target-epsilon 8 --tokens 122880
    flowerbed privacy ledger runs/<run>/clients/client-0/state/privacy_ledger.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from flowerbed.cli.parsing import subcommand_parser
from flowerbed.cli.recommend import recipe_settings, recommend_batch
from flowerbed.privacy.planning import plan


def _units(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--units",
        "--records",
        dest="units",
        type=int,
        required=True,
        help="privacy units the client holds: blocks (sequences), documents or users",
    )
    parser.add_argument(
        "--unit",
        choices=["sequence", "document", "user"],
        default="sequence",
        help="what one unit is (privacy.unit); ε protects one of them (default: %(default)s)",
    )
    parser.add_argument(
        "--delta", type=float, default=1e-5, help="δ of the guarantee (default: %(default)g)"
    )
    parser.add_argument(
        "--accountant",
        choices=["prv", "rdp"],
        default="prv",
        help="how steps compose into ε: prv (tighter) or rdp (default: %(default)s)",
    )


def _settings(parser: argparse.ArgumentParser) -> None:
    _units(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        required=True,
        help="expected units per step (train.batch_size)",
    )
    parser.add_argument(
        "--rounds", type=int, required=True, help="rounds the client trains in (its life)"
    )
    parser.add_argument(
        "--local-steps", type=int, required=True, help="DP-SGD steps a round (train.local_steps)"
    )
    parser.add_argument(
        "--bands",
        type=int,
        default=1,
        help="privacy.mechanism=banded's bands, a divisor of --local-steps (default: 1, DP-SGD)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser, commands = subcommand_parser("flowerbed privacy", __doc__)
    noise = commands.add_parser("noise", help="the noise multiplier that spends a target epsilon")
    _settings(noise)
    noise.add_argument(
        "--target-epsilon", type=float, required=True, help="the ε the client's whole life spends"
    )
    spend = commands.add_parser("epsilon", help="the epsilon that a noise multiplier spends")
    _settings(spend)
    spend.add_argument(
        "--noise-multiplier", type=float, required=True, help="σ, the noise per clipped sum"
    )
    recipe = commands.add_parser(
        "recommend", help="the batch and steps that spend a token budget with the least noise"
    )
    recipe_settings(recipe, _units)
    ledger = commands.add_parser("ledger", help="show a client's privacy ledger")
    ledger.add_argument("path", type=Path, help="a client's privacy_ledger.json")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    # Opacus's PRV accountant bounds its domain with RDP, whose orders stop short at tiny
    # rates; the warning says nothing about the printed numbers.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    if args.command == "ledger":
        _show_ledger(args.path)
        return
    if args.command == "recommend":
        recommend_batch(args)
        return
    problem = _problem(args)
    if problem:
        raise SystemExit(f"flowerbed privacy {args.command}: {problem}")
    result = plan(
        args.units,
        args.batch_size,
        args.rounds,
        args.local_steps,
        args.delta,
        args.accountant,
        target_epsilon=getattr(args, "target_epsilon", None),
        noise_multiplier=getattr(args, "noise_multiplier", None),
        bands=args.bands,
    )
    units = f"{args.unit}s"
    print(
        f"sample rate q = {result.sample_rate:.6g} ({args.batch_size} of {args.units} {units} "
        "per step)"
    )
    print(f"steps         = {result.steps} ({args.rounds} rounds x {args.local_steps} local steps)")
    if args.bands > 1:
        print(
            f"banded noise  = {args.bands} bands: each unit sampled in one step of {args.bands}, "
            f"at {args.bands}x the rate"
        )
    print(f"noise σ       = {result.noise_multiplier:.6g}")
    print(
        f"epsilon       = {result.epsilon:.4f} per {args.unit} at delta = {result.delta:g} "
        f"({args.accountant})"
    )


def _problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the settings, in a sentence (None: nothing)."""
    counts = {"--units": args.units, "--batch-size": args.batch_size}
    counts |= {"--rounds": args.rounds, "--local-steps": args.local_steps}
    counts |= {"--bands": args.bands}
    for flag, value in counts.items():
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.local_steps % args.bands:
        return (
            f"--bands {args.bands} does not divide --local-steps {args.local_steps}: every "
            "round must hold whole sampling cycles"
        )
    if args.batch_size > args.units:
        return (
            f"--batch-size {args.batch_size} is more than the {args.units} units the client "
            "holds: a step samples each unit with probability batch-size / units, at most 1"
        )
    if not 0 < args.delta < 1:
        return f"--delta must be between 0 and 1 (exclusive), got {args.delta:g}"
    for flag in ("target_epsilon", "noise_multiplier"):
        value = getattr(args, flag, None)
        if value is not None and not value > 0:
            return f"--{flag.replace('_', '-')} must be > 0, got {value:g}"
    return None


def _show_ledger(path: Path) -> None:
    if not path.is_file():
        raise SystemExit(f"flowerbed privacy ledger: no file at {path}")
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        data = None
    if not isinstance(data, dict) or not {"delta", "entries"} <= data.keys():
        raise SystemExit(
            f"flowerbed privacy ledger: {path} is not a privacy ledger (a client's "
            "privacy_ledger.json, in its state directory)"
        )
    print(
        f"{path}: ε per {data.get('unit', 'sequence')}, delta {data['delta']:g}, accountant "
        f"{data['accountant']}, noise σ {data['noise_multiplier']}, planned steps "
        f"{data['planned_steps']}"
    )
    if data.get("mechanism") == "banded":
        print(
            f"banded noise, {len(data['coefficients'])} bands: each entry's q and steps are "
            "what its steps cost as DP-SGD (bands x the rate, over steps / bands)"
        )
    print("| round | σ | q | steps | lifetime ε |")
    print("|---|---|---|---|---|")
    for e in data["entries"]:
        print(
            f"| {e['round']} | {e['noise_multiplier']:.4g} | {e['sample_rate']:.4g} | "
            f"{e['steps']} | {e['epsilon']:.4f} |"
        )
