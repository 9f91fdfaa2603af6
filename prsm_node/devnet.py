"""The devnet launcher: N data dirs on 127.0.0.1, then N real `prsm-node run` processes.

`devnet init` writes `<dir>/node<i>/` (key, node.toml with a free port, the later nodes
bootstrapping from node0) and `<dir>/devnet.json` listing them. `Devnet` starts, waits for,
signals and stops the processes; `prsm-node devnet up` and the multi-process tests and
benchmarks all use it, so they exercise exactly what an operator runs.

Rules: every wait polls a condition against a deadline (no fixed sleeps); every process
started is stopped by `stop_all` (SIGTERM, then SIGKILL past the grace period).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from nacl.signing import SigningKey

from consensus.genesis import Params
from prsm_node.config import NetworkConfig, NodeConfig, RegistrySection
from prsm_node.control import ControlClient, ControlClientError
from prsm_node.datadir import DataDir
from prsm_node.dht_service import unix_ms
from prsm_node.errors import UserError
from prsm_node.identity import peer_id_of, read_seed
from prsm_node.ledger_genesis import GENESIS_FILE_NAME, devnet_genesis, write_genesis

MANIFEST_NAME = "devnet.json"
DEVNET_REGISTRY = replace(
    RegistrySection(),
    eclipse_protection=False,  # every node has the same IP: nothing to diversify
    rate_limit_per_s=1000,  # one relay carries the whole devnet's traffic
    gpu_probe=False,  # a probe imports torch: ~1 s of CPU per node started
)
"""The [registry] section of devnet nodes: loopback settings (eclipse protection off, a
rate limit above what one machine can produce, no GPU probe)."""
NODES_MAX = 256
POLL_INTERVAL_S = 0.05
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class DevnetNode:
    name: str
    data_dir: Path
    peer_id: str
    listen: str

    @property
    def address(self) -> str:
        return f"{self.listen}/p2p/{self.peer_id}"

    @property
    def socket_path(self) -> Path:
        return DataDir(self.data_dir).socket_path


def free_tcp_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (held open together so none repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def devnet_init(
    directory: Path,
    nodes: int,
    network: NetworkConfig | None = None,
    validators: int | None = None,
    *,
    params: Params | None = None,
    registry: RegistrySection = DEVNET_REGISTRY,
) -> list[DevnetNode]:
    """Create the data dirs and devnet.json; refuses to overwrite an existing devnet.
    `params` overrides the genesis parameters (tests shorten the job timers)."""
    if not 1 <= nodes <= NODES_MAX:
        raise UserError(f"--nodes must be between 1 and {NODES_MAX}")
    if validators is not None and not 1 <= validators <= nodes:
        raise UserError(f"--validators must be between 1 and --nodes ({nodes})")
    if (directory / MANIFEST_NAME).exists():
        raise UserError(f"{directory} already holds a devnet; remove it or pick another --dir")
    directory.mkdir(parents=True, exist_ok=True)
    base = network or NetworkConfig()
    created: list[DevnetNode] = []
    for index, port in enumerate(free_tcp_ports(nodes)):
        data_dir = DataDir(directory.resolve() / f"node{index}")
        listen = f"/ip4/127.0.0.1/tcp/{port}"
        bootstrap = (created[0].address,) if created else ()
        network_config = replace(base, listen=(listen,), bootstrap=bootstrap)
        config = NodeConfig(network=network_config, registry=registry)
        data_dir.initialise(config)
        data_dir.check_socket_path()
        peer_id = peer_id_of(read_seed(data_dir.key_file))
        created.append(DevnetNode(f"node{index}", data_dir.root, peer_id, listen))
    _write_shared_genesis(created, validators, params)
    manifest = [
        {"name": n.name, "data_dir": str(n.data_dir), "peer_id": n.peer_id, "listen": n.listen}
        for n in created
    ]
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return created


def _write_shared_genesis(
    nodes: list[DevnetNode], validators: int | None, params: Params | None
) -> None:
    """One chain for the whole devnet: every node funded; node0.. node(validators-1)
    validators (all by default), the rest followers."""
    keys = [
        bytes(SigningKey(read_seed(DataDir(node.data_dir).key_file)).verify_key) for node in nodes
    ]
    chain_id = f"prsm-devnet-{keys[0].hex()[:8]}"
    genesis = devnet_genesis(keys, chain_id, unix_ms(), validators, params)
    for node in nodes:
        write_genesis(node.data_dir / GENESIS_FILE_NAME, genesis)


def load_devnet(directory: Path) -> list[DevnetNode]:
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no devnet in {directory}: run `prsm-node devnet init` first") from None
    return [
        DevnetNode(item["name"], Path(item["data_dir"]), item["peer_id"], item["listen"])
        for item in manifest
    ]


class Devnet:
    """The processes of a devnet; use as a context manager so every one is stopped."""

    def __init__(self, nodes: list[DevnetNode], *, extra_args: list[str] | None = None) -> None:
        self.nodes = nodes
        self._extra_args = extra_args or []
        self.call_timeout_s = CALL_TIMEOUT_S  # raised by callers that load the machine
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._outputs: dict[int, IO[bytes]] = {}

    def __enter__(self) -> Devnet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(self, index: int) -> subprocess.Popen[bytes]:
        node = self.nodes[index]
        output = open(node.data_dir / "logs" / "process.log", "ab")  # noqa: SIM115 (kept open)
        command = [sys.executable, "-m", "prsm_node", "run", "--data-dir", str(node.data_dir)]
        process = subprocess.Popen(
            command + self._extra_args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # Own session: a Ctrl-C in the terminal reaches only the launcher, which then
            # stops each node once (a node signalled twice is killed before its clean-up).
            start_new_session=True,
        )
        self._processes[index] = process
        self._outputs[index] = output
        return process

    def start_all(self) -> None:
        for index in range(len(self.nodes)):
            self.start(index)

    def pid(self, index: int) -> int:
        """The process id of a started node (benchmarks read its CPU time from /proc)."""
        return self._processes[index].pid

    def client(self, index: int, timeout_s: float = CALL_TIMEOUT_S) -> ControlClient:
        return ControlClient(self.nodes[index].socket_path, timeout_s=timeout_s)

    def call(self, index: int, method: str, params: dict[str, Any] | None = None) -> Any:
        with self.client(index, self.call_timeout_s) as client:
            return client.call(method, params)

    def wait_ready(self, index: int, deadline_s: float = 30.0) -> dict[str, Any]:
        """Poll node_info until it answers with listen addresses (the control socket
        answers a moment before the host listens); raises if the process died or time ran
        out."""

        def listening() -> dict[str, Any] | None:
            info = self._node_info_or_none(index)
            return info if info is not None and info.get("listen_addrs") else None

        return wait_for(listening, deadline_s, f"{self.nodes[index].name} listening")

    def _node_info_or_none(self, index: int) -> dict[str, Any] | None:
        process = self._processes.get(index)
        if process is not None and process.poll() is not None:
            raise UserError(
                f"{self.nodes[index].name} exited with code {process.returncode}; "
                f"see {self.nodes[index].data_dir / 'logs' / 'process.log'}"
            )
        try:
            return self.call(index, "node_info")
        except ControlClientError:
            return None

    def wait_meshed(self, deadline_s: float = 60.0) -> None:
        """Poll until every node is connected to every other node."""
        everyone = {node.peer_id for node in self.nodes}
        for index, node in enumerate(self.nodes):
            wait_for(
                lambda index=index, node=node: (
                    {peer["peer_id"] for peer in self.call(index, "peers_list")["peers"]}
                    == everyone - {node.peer_id}
                ),
                deadline_s,
                f"{node.name} connected to all the others",
            )

    def signal(self, index: int, signum: int) -> None:
        self._processes[index].send_signal(signum)

    def kill(self, index: int) -> None:
        """SIGKILL, as a crash would: no clean-up runs."""
        process = self._processes[index]
        process.kill()
        process.wait()

    def wait_exit(self, index: int, deadline_s: float = 30.0) -> int:
        """Wait for the process to exit by itself (after a signal we sent); its exit code."""
        process = self._processes.pop(index)
        try:
            process.wait(deadline_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            self._outputs.pop(index).close()
        return process.returncode

    def stop(self, index: int, grace_s: float = 10.0, *, signalled: bool = False) -> int:
        """SIGTERM (unless `signalled` already), wait, SIGKILL past the grace; the exit code.

        Never a second SIGTERM: the node restores the default handler once it is shutting
        down, so a second one would kill it before it removes its socket and lock (that is
        the operator's "force quit", not what a clean stop wants)."""
        process = self._processes.pop(index, None)
        if process is None:
            return 0
        if process.poll() is None:
            if not signalled:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._outputs.pop(index).close()
        return process.returncode

    def stop_all(self, grace_s: float = 10.0) -> dict[int, int]:
        """SIGTERM every node at once, then wait for each."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return {index: self.stop(index, grace_s, signalled=True) for index in list(self._processes)}

    def exited(self) -> dict[int, int]:
        """Processes that have exited by themselves, with their codes."""
        return {i: p.returncode for i, p in self._processes.items() if p.poll() is not None}


def wait_for(probe: Any, deadline_s: float, what: str) -> Any:
    """Call `probe` until it returns something truthy; TimeoutError naming `what` past it."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s:g} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)
