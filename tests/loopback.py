"""A coordinator and institutions on one machine: real Flower processes on loopback.

The commands are the ones docs/deployment.md's walk-through gives: `flowerbed deploy`,
`flower-superlink` with TLS, SuperNode authentication and a state database,
`flwr supernode register` and `flower-supernode`. The deployment tests and the transport
benchmark use it, from a flowerbed checkout (its root is the Flower app); it is a test
harness, not part of the platform, so it is not in the wheel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: tests/
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """One SuperLink and any number of SuperNodes under `root`; `close()` stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.certs = root / "certs"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # SuperExec is found on PATH
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_HOME": str(root / "cli"),
        }
        (root / "cli").mkdir(parents=True, exist_ok=True)
        (root / "cli" / "config.toml").write_text(
            '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n'
        )

    def command(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def flowerbed(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.command(sys.executable, "-m", "flowerbed.cli.main", *args, timeout=timeout)

    def start(self, name: str, *args: str, home: str | None = None) -> subprocess.Popen:
        env = {**self.env, "FLWR_HOME": str(self.root / (home or name))}
        log = (self.root / f"{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.processes[name]

    def start_superlink(self) -> None:
        self.start(
            "superlink",
            str(BIN / "flower-superlink"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--ssl-ca-certfile", str(self.certs / "ca.crt"),
            "--ssl-certfile", str(self.certs / "superlink.crt"),
            "--ssl-keyfile", str(self.certs / "superlink.key"),
            "--enable-supernode-auth",
            "--database", str(self.root / "superlink.db"),
        )  # fmt: skip
        self.wait_for(lambda: "Uvicorn running" in self.log("superlink"), "the SuperLink")

    def start_supernode(self, name: str, key: Path, node_config: str) -> subprocess.Popen:
        return self.start(
            name,
            str(BIN / "flower-supernode"),
            "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(key),
            "--port", str(free_port()),
            "--node-config", node_config,
        )  # fmt: skip

    def online_nodes(self) -> int:
        out = self.command(str(BIN / "flwr"), "supernode", "list", "loopback").stdout
        return out.count("online")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    @staticmethod
    def wait_for(condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} was not ready after {timeout:.0f} s")
            time.sleep(0.5)

    def stop(self, name: str) -> None:
        """Kill the process and what it started (SuperExec, ClientApps) at once."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def kill_descendant(self, name: str, program: str) -> int:
        """Kill, by its id, the process running `program` that `name` started; return the id.

        Only this harness's own process tree is searched: other work on the machine may
        run a program of the same name.
        """
        for pid in _descendants(self.processes[name].pid):
            with contextlib.suppress(OSError):
                if program.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    return pid
        raise LookupError(f"no {program} process under {name}")

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)


def _descendants(root: int) -> list[int]:
    """Every process below `root` in the process tree (Linux: read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
