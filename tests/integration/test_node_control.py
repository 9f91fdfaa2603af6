"""The control API and the CLI against a real node process."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from prsm_node.control import ControlClient, ControlClientError
from prsm_node.datadir import DataDir
from prsm_node.devnet import Devnet, wait_for

from .conftest import run_cli

pytestmark = pytest.mark.multiprocess


def raw_exchange(socket_path: Path, payload: bytes) -> dict:
    """Send raw bytes on the control socket and read one reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(socket_path))
        with contextlib.suppress(BrokenPipeError):  # closed after an oversized line
            sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


def assert_still_serving(devnet: Devnet) -> None:
    assert devnet.call(0, "node_info")["peer_id"] == devnet.nodes[0].peer_id


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"jsonrpc": "2.0", "id": 1, "method": "node_info"\n', -32700),
        (b'{"jsonrpc": "2.0", "id": 2, "method": "no_such_method"}\n', -32601),
        (
            b'{"jsonrpc": "2.0", "id": 3, "method": "peers_connect", "params": {"multiaddr": 5}}\n',
            -32602,
        ),
        (b'{"jsonrpc": "2.0", "id": 4, "method": "peers_connect", "params": {}}\n', -32602),
        (b'{"jsonrpc": "1.0", "id": 5, "method": "node_info"}\n', -32600),
        (
            b'{"jsonrpc": "2.0", "id": 6, "method": "peers_connect", '
            b'"params": {"multiaddr": "/ip4/1.2.3/tcp/1"}}\n',
            -32602,
        ),
        (b"x" * (10 * 1024 * 1024) + b"\n", -32600),
    ],
    ids=["malformed", "unknown", "wrong-type", "missing", "bad-version", "bad-multiaddr", "10MB"],
)
def test_bad_requests_get_spec_errors_and_the_node_keeps_serving(
    make_devnet: Callable[..., Devnet], payload: bytes, code: int
) -> None:
    devnet = make_devnet(1)
    reply = raw_exchange(devnet.nodes[0].socket_path, payload)
    assert reply["jsonrpc"] == "2.0"
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert_still_serving(devnet)


def test_batch_answers_each_request(make_devnet: Callable[..., Devnet]) -> None:
    devnet = make_devnet(1)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "node_info"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"jsonrpc": "2.0", "method": "node_info"},
    ]
    with devnet.client(0) as client:
        replies = client.call_raw(batch)
    by_id = {reply["id"]: reply for reply in replies}
    assert set(by_id) == {1, 2}
    assert by_id[1]["result"]["pid"] > 0
    assert by_id[2]["error"]["code"] == -32601


def test_control_socket_is_private(make_devnet: Callable[..., Devnet]) -> None:
    devnet = make_devnet(1)
    assert devnet.nodes[0].socket_path.stat().st_mode & 0o777 == 0o600


def test_cli_client_commands(make_devnet: Callable[..., Devnet]) -> None:
    devnet = make_devnet(2)
    data_dir = str(devnet.nodes[1].data_dir)
    wait_for(lambda: devnet.call(1, "peers_list")["peers"], 30, "node1 connected to node0")
    status = run_cli("status", "--data-dir", data_dir, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["peer_id"] == devnet.nodes[1].peer_id
    human = run_cli("status", "--data-dir", data_dir)
    assert devnet.nodes[1].peer_id in human.stdout and "peers" in human.stdout
    peers = run_cli("peers", "--data-dir", data_dir, "--json")
    assert [p["peer_id"] for p in json.loads(peers.stdout)["peers"]] == [devnet.nodes[0].peer_id]
    table = run_cli("peers", "--data-dir", data_dir)
    assert "DIRECTION" in table.stdout and devnet.nodes[0].peer_id in table.stdout
    raw = run_cli("rpc", "node_info", "--data-dir", data_dir)
    assert json.loads(raw.stdout)["result"]["data_dir"] == data_dir
    bad = run_cli("rpc", "peers_connect", '{"multiaddr": 1}', "--data-dir", data_dir)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == -32602


def test_cli_connect_joins_two_unrelated_nodes(make_devnet: Callable[..., Devnet]) -> None:
    first, second = make_devnet(1), make_devnet(1)
    address = first.nodes[0].address
    result = run_cli("connect", address, "--data-dir", str(second.nodes[0].data_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"peer_id": first.nodes[0].peer_id, "connected": True}
    wait_for(
        lambda: first.call(0, "peers_list")["peers"], 30, "the first node seeing the inbound peer"
    )


def test_cli_stop_shuts_the_node_down(make_devnet: Callable[..., Devnet]) -> None:
    devnet = make_devnet(1)
    result = run_cli("stop", "--data-dir", str(devnet.nodes[0].data_dir))
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert devnet.wait_exit(0) == 0
    assert not devnet.nodes[0].socket_path.exists()


def test_client_commands_say_plainly_when_no_node_runs(short_dir: Path) -> None:
    for command in ("status", "peers", "stop"):
        result = run_cli(command, "--data-dir", str(short_dir))
        assert result.returncode == 1
        assert "no node is running" in result.stderr
        assert "Traceback" not in result.stderr


def test_second_daemon_on_the_same_data_dir_is_refused(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(1)
    result = run_cli("run", "--data-dir", str(devnet.nodes[0].data_dir))
    assert result.returncode == 1
    assert "already running" in result.stderr and "Traceback" not in result.stderr
    assert_still_serving(devnet)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[network]\nlisten = ['/ip4/300.1.1.1/tcp/1']\n", "network.listen"),
        ("[network]\npeers_max = 'many'\n", "network.peers_max"),
        ("[network]\nmystery = 1\n", "network.mystery"),
    ],
)
def test_config_errors_stop_the_node_with_exit_code_2(short_dir: Path, toml: str, key: str):
    config = short_dir / "bad.toml"
    config.write_text(toml)
    result = run_cli("run", "--data-dir", str(short_dir / "d"), "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr and key in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_value_names_the_flag(short_dir: Path) -> None:
    result = run_cli("run", "--data-dir", str(short_dir), "--bootstrap", "/ip4/127.0.0.1/tcp/9")
    assert result.returncode == 2
    assert "command line" in result.stderr and "network.bootstrap" in result.stderr


def test_init_is_idempotent_and_keeps_the_identity(short_dir: Path) -> None:
    devnet_dir = short_dir / "fresh"
    result = run_cli("init", "--data-dir", str(devnet_dir), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["created"] is True
    again = run_cli("init", "--data-dir", str(devnet_dir), "--json")
    assert json.loads(again.stdout)["created"] is False
    assert json.loads(again.stdout)["peer_id"] == json.loads(result.stdout)["peer_id"]


def test_run_initialises_a_data_dir_that_was_never_initialised(short_dir: Path) -> None:
    data_dir = DataDir(short_dir / "never")
    command = [sys.executable, "-m", "prsm_node", "run", "--data-dir", str(data_dir.root)]
    process = subprocess.Popen(
        [*command, "--listen", "/ip4/127.0.0.1/tcp/0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with_client = lambda: _node_info_or_none(data_dir)  # noqa: E731
        info = wait_for(with_client, 30, "a fresh node answering node_info")
        assert info["data_dir"] == str(data_dir.root)
        assert data_dir.key_file.stat().st_mode & 0o777 == 0o600
        assert data_dir.config_file.exists()
    finally:
        process.terminate()
        assert process.wait(30) == 0


def _node_info_or_none(data_dir: DataDir) -> dict | None:
    try:
        with ControlClient(data_dir.socket_path) as client:
            return client.call("node_info")
    except ControlClientError:
        return None
