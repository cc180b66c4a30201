"""Bytes and seconds per round on the Deployment Engine, over loopback with TLS.

A coordinator (SuperLink with TLS, SuperNode authentication, a database) and two
institutions (SuperNodes) on this machine run 2 rounds of 1 local step for each model
preset and transport dtype, side by side in one run; the table reports the bytes one
client receives per round (it sends as many back) and the seconds of round 2 (round 1
also starts the ServerApp side).

    uv run python simulations/bench_deployment.py --presets small 125m
    uv run python simulations/bench_deployment.py --experiment smoke_dp   # the walk-through
    uv run python simulations/bench_deployment.py --secure --dtypes fp16  # SecAgg+ beside clear

With `--secure`, three institutions run each preset and dtype twice, in the clear and with
SecAgg+ (`federation.secure_aggregation=secaggplus`: five Messages per client per round,
and a masked update of 32-bit integers back, whatever the transport dtype).

With `--experiment`, the shards and the one run use that experiment, as docs/deployment.md's
deployment walk-through does (`deploy prepare --shards ... experiment=smoke_dp`), and
the table gives every round's seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

# The loopback harness is test code (tests/loopback.py), not part of the installed platform.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.loopback import BIN, Loopback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "125m"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"])
    parser.add_argument("--experiment", help="run the deployment walk-through with this experiment")
    parser.add_argument("--secure", action="store_true", help="also with SecAgg+ (3 sites)")
    args = parser.parse_args()
    sites = 3 if args.secure else 2
    aggregations = ["off", "secaggplus"] if args.secure else ["off"]
    with tempfile.TemporaryDirectory() as tmp:
        loopback = Loopback(Path(tmp))
        try:
            if args.experiment:
                settings = [f"experiment={args.experiment}"]
                start_institutions(loopback, settings, sites)
                walkthrough(loopback, settings)
                return
            start_institutions(loopback, _settings(sites=sites), sites)
            rows = measure(loopback, args.presets, args.dtypes, aggregations, sites)
        finally:
            loopback.close()
    print(f"{sites} institutions over loopback with TLS, CPU")
    print("| preset | parameters | transport | secure aggregation | MB down | MB up | round 2 s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['preset']} | {row['parameters']:,} | {row['dtype']} | {row['secure']} "
            f"| {row['bytes'] / 1e6:.1f} | {row['bytes_up'] / 1e6:.1f} | {row['seconds']:.1f} |"
        )


def start_institutions(loopback: Loopback, shard_settings: list[str], sites: int) -> None:
    """Credentials, one shard per institution, the SuperLink and a SuperNode per site."""
    root = loopback.root
    institutions = [arg for i in range(sites) for arg in ("--institution", f"site-{i}")]
    made = loopback.flowerbed(
        "deploy", "credentials", str(loopback.certs), "--host", "127.0.0.1", *institutions
    )
    _check(made, "credentials")
    shards = root / "shards"
    prepared = loopback.flowerbed("deploy", "prepare", "--shards", str(shards), *shard_settings)
    _check(prepared, "shards")
    loopback.start_superlink()
    for i in range(sites):
        key = loopback.certs / "supernodes" / f"site-{i}"
        _check(loopback.command(str(BIN / "flwr"), "supernode", "register", f"{key}.pub"), "reg")
        loopback.start_supernode(
            f"site-{i}",
            key,
            f"partition-id={i} data-dir='{shards}/clients/client-{i}/data' "
            f"state-dir='{root}/site-{i}-state' device='cpu' threads=1 require-dp=false",
        )
    loopback.wait_for(lambda: loopback.online_nodes() == sites, f"{sites} SuperNodes online")


def walkthrough(loopback: Loopback, settings: list[str]) -> None:
    """One run of `settings` on the institutions; every round's seconds."""
    run_dir = loopback.root / "walkthrough"
    _check(loopback.flowerbed("deploy", "prepare", str(run_dir), *settings), "prepare")
    _check(loopback.flowerbed("deploy", "run", str(run_dir), "--connection", "loopback"), "run")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"{' '.join(settings)}, 2 institutions over loopback with TLS")
    print("| round | s | train loss | val loss | epsilon max |\n|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['round']} | {r['seconds']:.1f} | {r['train_loss']:.4f} | {r['val_loss']:.4f} "
            f"| {r['epsilon_max'] if r['epsilon_max'] is None else round(r['epsilon_max'], 2)} |"
        )


def measure(
    loopback: Loopback, presets: list[str], dtypes: list[str], aggregations: list[str], sites: int
) -> list[dict]:
    root = loopback.root
    rows = []
    for preset, dtype, secure in itertools.product(presets, dtypes, aggregations):
        run_dir = root / f"{preset}-{dtype}-{secure}"
        settings = _settings(
            f"federation.transport_dtype={dtype}",
            f"federation.secure_aggregation={secure}",
            preset=preset,
            sites=sites,
        )
        _check(loopback.flowerbed("deploy", "prepare", str(run_dir), *settings), "prepare")
        ran = loopback.flowerbed("deploy", "run", str(run_dir), "--connection", "loopback")
        _check(ran, "run")
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append(
            {
                "preset": preset,
                "dtype": dtype,
                "parameters": summary["parameters"],
                "secure": secure,
                "bytes": records[-1]["bytes_per_client"],
                "bytes_up": records[-1]["masked_bytes_per_client"]
                or records[-1]["bytes_per_client"],
                "seconds": records[-1]["seconds"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def _settings(*extra: str, preset: str = "tiny", sites: int = 2) -> list[str]:
    return [
        f"model={preset}",
        "data=synthetic",
        "privacy=off",
        "continual=off",
        f"federation.num_clients={sites}",
        "federation.rounds=2",
        "federation.fraction_evaluate=0",
        "train.local_steps=1",
        "train.batch_size=2",
        "train.eval_batches=1",
        *extra,
    ]


def _check(out, what: str) -> None:
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


if __name__ == "__main__":
    main()
