"""`flowerbed deploy`: run the federation across institutions on Flower's Deployment Engine.

Coordinator:
    flowerbed deploy credentials certs --host coordinator.example.org --institution site-a
    flowerbed deploy prepare runs/study [hydra overrides]     # config, tokenizer, validation
    flowerbed deploy run runs/study --connection flowerbed    # submit; exits 1 unless done
Institution (with the run's config.yaml and data/tokenizer/ from the coordinator):
    flowerbed deploy supernode-key keys site-a                # send keys/site-a.pub only
    flowerbed deploy shard /data/site-a /records/2026-11 --config kit/config.yaml
    flowerbed deploy node-config --data-dir /data/site-a --state-dir /state/site-a \
        --max-epsilon 8 --privacy-unit document  # the SuperNode's --node-config

docs/deployment.md and clients/README.md walk through it command by command.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from flowerbed.atomic import write_json_atomic
from flowerbed.cli.parsing import subcommand_parser
from flowerbed.config import ConfigError, compose_config, load_config
from flowerbed.data import DataError
from flowerbed.tracking import RunLayout


def build_parser() -> argparse.ArgumentParser:
    parser, commands = subcommand_parser("flowerbed deploy", __doc__)

    cred = commands.add_parser("credentials", help="CA, SuperLink certificate, SuperNode keys")
    cred.add_argument("out", type=Path)
    cred.add_argument("--host", action="append", required=True, help="SuperLink name or IP")
    cred.add_argument("--institution", action="append", default=[], help="a key pair for it")

    key = commands.add_parser("supernode-key", help="an institution's own SuperNode key pair")
    key.add_argument("out", type=Path)
    key.add_argument("name")

    prep = commands.add_parser("prepare", help="a run directory for the coordinator")
    prep.add_argument("run_dir", type=Path)
    prep.add_argument("overrides", nargs="*", help="Hydra overrides, as for `simulate`")
    prep.add_argument(
        "--shards",
        action="store_true",
        help="also cut the configured corpus into client shards (a loopback walk-through)",
    )

    shard = commands.add_parser("shard", help="an institution's files as a new experience")
    shard.add_argument("data_dir", type=Path, help="the SuperNode's data-dir")
    shard.add_argument("paths", nargs="+", help="files or folders (.txt, .jsonl, .parquet)")
    shard.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the run's config.yaml: its sequence length, text field and per-domain cap",
    )
    shard.add_argument(
        "--tokenizer", type=Path, help="the run's tokenizer (default: data/tokenizer beside it)"
    )

    node = commands.add_parser(
        "node-config", help="an institution's checked --node-config: its machine and policy"
    )
    node.add_argument("--partition-id", type=int, default=0, help="the number the coordinator gave")
    node.add_argument("--data-dir", type=Path, required=True, help="its prepared shard")
    node.add_argument("--state-dir", type=Path, required=True, help="ledger, secret, state")
    node.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    node.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    node.add_argument(
        "--ranks",
        default="1",
        help="processes a round trains on, data parallel: a count, or auto (one per GPU)",
    )
    node.add_argument(
        "--allow-no-dp",
        action="store_true",
        help="train without DP-SGD when the coordinator asks (by default a node refuses)",
    )
    node.add_argument(
        "--ledger-mirror-dir",
        type=Path,
        help="where the ledger's copy lives, off the state dir (default ~/.local/state/flowerbed)",
    )
    node.add_argument(
        "--require-secure-aggregation",
        action="store_true",
        help="refuse to send an update the coordinator could read on its own",
    )
    node.add_argument("--max-epsilon", type=float, help="the largest lifetime ε it accepts")
    node.add_argument("--max-delta", type=float, help="the largest δ it accepts")
    node.add_argument(
        "--privacy-unit", choices=["sequence", "document", "user"], help="the smallest unit"
    )
    node.add_argument("--accountant", choices=["prv", "rdp"], help="refuse any other")
    node.add_argument(
        "--release",
        choices=["minimal", "exact"],
        default="minimal",
        help="what leaves besides the update (default: minimal, no losses or counts)",
    )

    run = commands.add_parser("run", help="submit the run; exit 1 unless it completes")
    run.add_argument("run_dir", type=Path)
    run.add_argument("--connection", required=True, help="a SuperLink in $FLWR_HOME/config.toml")
    run.add_argument("--app", type=Path, default=Path("."), help="the flowerbed checkout")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    try:
        {
            "credentials": _credentials,
            "supernode-key": _supernode_key,
            "prepare": _prepare,
            "shard": _shard,
            "node-config": _node_config,
            "run": _run,
        }[args.command](args)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as err:
        sys.exit(f"flowerbed deploy {args.command}: {err}")


def _credentials(args: argparse.Namespace) -> None:
    from flowerbed.deploy.credentials import coordinator_credentials

    coordinator_credentials(args.out, args.host, args.institution)
    print(f"wrote {args.out}/ca.crt (give it to every institution), superlink.crt and .key")
    for name in args.institution:
        print(f"  {args.out}/supernodes/{name} (private: to {name} only) and {name}.pub")


def _supernode_key(args: argparse.Namespace) -> None:
    from flowerbed.deploy.credentials import supernode_key_pair

    public = supernode_key_pair(args.out, args.name)
    print(f"wrote {args.out / args.name} (keep it here) and {public} (send it to the coordinator)")


def _prepare(args: argparse.Namespace) -> None:
    from flowerbed.run.prepare import prepare_coordinator, write_client_shards
    from flowerbed.run.simulation import preflight

    cfg = compose_config(*args.overrides)
    refuse_faults(cfg)
    preflight(cfg)  # the ServerApp evaluates on `device` on this machine
    layout = RunLayout(args.run_dir)
    if layout.config.is_file():
        raise FileExistsError(f"{layout.config} exists: resubmit it with `flowerbed deploy run`")
    splits = prepare_coordinator(cfg, layout)
    if args.shards:
        write_client_shards(cfg, layout, splits)
    print(f"wrote {layout.config}, {layout.tokenizer} and the validation split")
    if args.shards:
        print(f"  and {cfg.federation.num_clients} client shards under {layout.clients}")


def refuse_faults(cfg) -> None:
    """Faults are a simulation's: institutions are real, and nothing may tell them to lie."""
    if cfg.faults.kind != "none":
        raise ConfigError(
            f"faults={cfg.faults.kind} is for simulations only: a deployment's institutions "
            "are real; drop the faults overrides"
        )


def _shard(args: argparse.Namespace) -> None:
    from flowerbed.deploy.shard import add_experience

    cfg = load_config(args.config)
    tokenizer = args.tokenizer or RunLayout(args.config.parent).tokenizer
    folder, shard = add_experience(args.data_dir, args.paths, cfg.data, tokenizer)
    print(
        f"wrote {folder}: {len(shard.train)} training and {len(shard.heldout)} held-out blocks "
        f"of {cfg.data.seq_len} tokens; the SuperNode picks it up at the next round"
    )


def _node_config(args: argparse.Namespace) -> None:
    """Print the SuperNode's `--node-config`, its policy checked as the ClientApp reads it."""
    from flowerbed.config.node_policy import policy_from_node_config
    from flowerbed.config.rules import SchemaError

    if args.partition_id < 0 or args.threads < 0:
        raise ConfigError(
            f"--partition-id and --threads must be >= 0, got {args.partition_id} and {args.threads}"
        )
    machine = {
        "partition-id": args.partition_id,
        "data-dir": f"'{args.data_dir.expanduser().resolve()}'",
        "state-dir": f"'{args.state_dir.expanduser().resolve()}'",
        "device": f"'{args.device}'",
    }
    if args.threads:
        machine["threads"] = args.threads
    if args.ledger_mirror_dir:
        machine["ledger-mirror-dir"] = f"'{args.ledger_mirror_dir.expanduser().resolve()}'"
    if args.ranks != "1":
        from flowerbed.client.node import NodeConfigError, ranks_of

        try:
            ranks_of(args.ranks, "cpu")  # its form only: the GPUs are the node's to count
        except NodeConfigError as err:
            raise ConfigError(str(err)) from None
        machine["ranks"] = "'auto'" if args.ranks == "auto" else int(args.ranks)
    policy = {
        "require-dp": "false" if args.allow_no_dp else None,
        "require-secure-aggregation": "true" if args.require_secure_aggregation else None,
        "max-epsilon": args.max_epsilon,
        "max-delta": args.max_delta,
        "privacy-unit": args.privacy_unit and f"'{args.privacy_unit}'",
        "accountant": args.accountant and f"'{args.accountant}'",
        "release": f"'{args.release}'",
    }
    policy = {k: v for k, v in policy.items() if v is not None}
    try:
        policy_from_node_config(
            {k: v.strip("'") if isinstance(v, str) else v for k, v in policy.items()}
        )
    except SchemaError as err:
        raise ConfigError(str(err)) from None
    print(" ".join(f"{k}={v}" for k, v in {**machine, **policy}.items()))


def _run(args: argparse.Namespace) -> None:
    layout = RunLayout(args.run_dir.resolve())
    if not layout.config.is_file():
        raise FileNotFoundError(f"{layout.config} is missing: run `flowerbed deploy prepare`")
    if layout.summary.is_file():
        write_json_atomic(layout.summary, {"status": "running"}, durable=True)
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    command = [flwr, "run", str(args.app), args.connection, "--stream"]
    command += ["--run-config", f"config-path='{layout.config}'"]
    returncode = subprocess.run(command).returncode
    from flowerbed.server.summary import RunSummary

    summary = RunSummary.read(layout.summary) if layout.summary.is_file() else None
    if summary is None or summary.status != "completed":
        # `flwr run` exits 0 even when the ServerApp failed: the run directory tells.
        sys.exit(
            f"flowerbed deploy run: the run in {layout.root} did not complete (flwr run "
            f"exited {returncode}; see `flwr log` and the SuperLink's log); submit the same "
            "command again to continue from its newest checkpoint"
        )
    print(f"completed: final val loss {summary.final_val_loss:.4f}; outputs in {layout.root}")
