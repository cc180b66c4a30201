"""`flowerbed <command> [args]`: one console command, one subcommand per job."""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: flowerbed <command> [args]     (flowerbed --version: the installed version)

commands:
  simulate [hydra overrides]   run a simulated federation (a Hydra app: -m sweeps work)
                               e.g. flowerbed simulate experiment=smoke
                                    flowerbed simulate -m sweep=privacy_replay
                                    flowerbed simulate resume=runs/default/2026-11-23_10-00-00
  deploy credentials|supernode-key|prepare|shard|run
                               a federation across institutions (Deployment Engine)
                               e.g. flowerbed deploy run runs/study --connection flowerbed
  report <sweep dir>           a sweep's report again: report.md, report.csv, plots
                               e.g. flowerbed report runs/default-sweep/2026-11-23_10-00-00
  runs [DIR]                   every run under DIR (default ./runs): status, rounds, loss, ε
  privacy noise|epsilon|recommend|ledger
                               plan a privacy budget, or read a client's ledger
                               e.g. flowerbed privacy noise --units 20000 --batch-size 16
                                        --rounds 20 --local-steps 50 --target-epsilon 8
                                    flowerbed privacy recommend --units 20000
                                        --target-epsilon 8 --tokens 2000000
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in {"-V", "--version"}:
        from importlib.metadata import version

        print(f"flowerbed {version('flowerbed')}")
        return
    if command == "simulate":
        from flowerbed.cli import simulate as cli_simulate
        from flowerbed.cli.simulate import hydra_simulate

        if rest[:1] in (["--help"], ["-h"]):
            from flowerbed.cli.schema_help import schema_help

            try:
                print(schema_help(rest[1] if len(rest) > 1 else None))
            except ValueError as err:
                raise SystemExit(str(err)) from None
            return
        if rest[:1] == ["--hydra-help"]:
            rest = ["--help", *rest[1:]]
        # sweep= and search= are config groups; the `+` earlier releases needed still works
        rest = [a.removeprefix("+") if a.startswith(("+sweep=", "+search=")) else a for a in rest]
        from flowerbed.cli.precheck import precheck, resuming

        refused = precheck(rest)
        if refused:
            raise SystemExit(f"flowerbed simulate: {refused}")
        sys.argv = ["flowerbed simulate", *rest, *resuming(rest)]
        cli_simulate.fresh_folder = not any(
            a.startswith("hydra.run.dir=") and Path(a.split("=", 1)[1]).expanduser().exists()
            for a in rest
        )
        hydra_simulate()
        return
    if command == "deploy":
        from flowerbed.cli.deploy import main as deploy_main

        deploy_main(rest)
        return
    if command == "report":
        from flowerbed.cli.report import main as report_main

        report_main(rest)
        return
    if command == "runs":
        from flowerbed.cli.runs import main as runs_main

        runs_main(rest)
        return
    if command == "privacy":
        from flowerbed.cli.privacy import main as privacy_main

        privacy_main(rest)
        return
    print(f"flowerbed: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
