"""The argparse shape every `flowerbed <command> <subcommand>` shares."""

from __future__ import annotations

import argparse


def subcommand_parser(
    prog: str, doc: str | None
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser that shows `doc` as written, and its required subcommands."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser, parser.add_subparsers(dest="command", required=True)
