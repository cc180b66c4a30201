"""The source root `platform/` must never shadow Python's standard-library `platform`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_platform_folder_has_no_init_file():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_import_platform_is_the_standard_library_even_from_the_repo_root():
    code = "import platform, torch; print(platform.__file__); print(platform.system())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "site-packages" not in out[0] and not out[0].startswith(str(ROOT / "platform"))
    assert out[1] in {"Linux", "Darwin", "Windows"}


def test_the_apps_do_not_import_avalanche_or_opacus_until_they_need_them():
    code = (
        "import sys, flowerbed.client.app, flowerbed.server.app, flowerbed.client.round_plan; "
        "print(sorted(m for m in ('avalanche', 'opacus') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_platform_files_stay_short_and_the_test_harness_is_not_in_it():
    platform = ROOT / "platform" / "flowerbed"
    long = {
        p.name: n for p in platform.rglob("*.py") if (n := len(p.read_text().splitlines())) > 250
    }
    assert not long, f"split these files: {long}"
    assert not list(platform.rglob("loopback.py"))


def test_a_supernode_without_its_folders_is_told_which_setting_is_missing():
    from flwr.app import Context, RecordDict

    from flowerbed.client.node import Node, NodeConfigError

    context = Context(1, 1, {"partition-id": 0, "data-dir": "/srv/data"}, RecordDict(), {})
    with pytest.raises(NodeConfigError, match="--node-config has no state-dir"):
        Node.from_context(context)


LOWER = {"config", "data", "model", "privacy", "continual", "tracking", "atomic", "protocol"}
LOWER |= {"keystream", "secagg"}  # what the SecAgg+ client and server share


def _imported_packages(source: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flowerbed."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("flowerbed.")}
    return names


def test_the_layers_point_one_way():
    """The building blocks never import the apps; client and server never import each other."""
    platform = ROOT / "platform" / "flowerbed"
    for source in platform.rglob("*.py"):
        package = source.relative_to(platform).parts[0].removesuffix(".py")
        imported = _imported_packages(source)
        if package in LOWER:
            assert not imported & {"client", "server", "run", "cli"}, source
        if package in {"client", "server"}:
            assert not imported & ({"client", "server"} - {package}), source
