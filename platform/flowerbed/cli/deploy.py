"""`flowerbed deploy`: run the federation across institutions on Flower's Deployment Engine.

Coordinator:
    flowerbed deploy credentials certs --host coordinator.example.org --institution site-a
    flowerbed deploy prepare runs/study [hydra overrides]     # config, tokenizer, validation
    flowerbed deploy run runs/study --connection flowerbed    # submit; exits 1 unless done
Institution:
    flowerbed deploy supernode-key keys site-a                # send keys/site-a.pub only
    flowerbed deploy shard /data/site-a --tokenizer tokenizer --seq-len 128 /records/2026-11

README ("Deployment") and clients/README.md walk through it command by command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from flowerbed.cli.conf_dir import conf_dir
from flowerbed.config import ConfigError, DataConfig, load_config
from flowerbed.data import DataError
from flowerbed.tracking import RunLayout
from flowerbed.tracking.metrics import write_json_atomic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowerbed deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

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
    shard.add_argument("--tokenizer", required=True, help="the run's tokenizer folder")
    shard.add_argument("--seq-len", type=int, required=True)
    shard.add_argument("--text-field", default="text")
    shard.add_argument("--cache-dir", default="~/.cache/flowerbed", help="packed-block cache")

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
    from hydra import compose, initialize_config_dir

    from flowerbed.cli.simulate import prepare_run

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = load_config(compose("config", overrides=args.overrides))
    layout = RunLayout(args.run_dir)
    if layout.config.is_file():
        raise FileExistsError(f"{layout.config} exists: resubmit it with `flowerbed deploy run`")
    prepare_run(cfg, layout, client_shards=args.shards)
    print(f"wrote {layout.config}, {layout.tokenizer} and the validation split")
    if args.shards:
        print(f"  and {cfg.federation.num_clients} client shards under {layout.clients}")


def _shard(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from flowerbed.continual.stream import experience_dir, scan_experiences
    from flowerbed.data.prepare import institution_shard

    cfg = DataConfig(
        corpus="files",
        paths=list(args.paths),
        text_field=args.text_field,
        seq_len=args.seq_len,
        cache_dir=args.cache_dir,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    shard = institution_shard(cfg, tokenizer)
    existing = scan_experiences(args.data_dir) if args.data_dir.is_dir() else []
    if any(e.folder == args.data_dir for e in existing):
        raise FileExistsError(
            f"{args.data_dir} holds one shard directly; experiences go in sub-folders: "
            "use an empty data directory"
        )
    folder = experience_dir(args.data_dir, len(existing))
    shard.save(folder)
    print(
        f"wrote {folder}: {len(shard.train)} training and {len(shard.heldout)} held-out blocks "
        f"of {args.seq_len} tokens; the SuperNode picks it up at the next round"
    )


def _run(args: argparse.Namespace) -> None:
    layout = RunLayout(args.run_dir.resolve())
    if not layout.config.is_file():
        raise FileNotFoundError(f"{layout.config} is missing: run `flowerbed deploy prepare`")
    if layout.summary.is_file():
        write_json_atomic(layout.summary, {"status": "running"})
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    command = [flwr, "run", str(args.app), args.connection, "--stream"]
    command += ["--run-config", f"config-path='{layout.config}'"]
    returncode = subprocess.run(command).returncode
    summary = json.loads(layout.summary.read_text()) if layout.summary.is_file() else {}
    if summary.get("status") != "completed":
        # `flwr run` exits 0 even when the ServerApp failed: the run directory tells.
        sys.exit(
            f"flowerbed deploy run: the run in {layout.root} did not complete (flwr run "
            f"exited {returncode}; see `flwr log` and the SuperLink's log); submit the same "
            "command again to continue from its newest checkpoint"
        )
    print(f"completed: final val loss {summary['final_val_loss']:.4f}; outputs in {layout.root}")
