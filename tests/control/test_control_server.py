"""The control server on a real Unix socket, driven by the real client and by raw streams."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from prsm_node.control import (
    ControlClient,
    ControlConnectionError,
    ControlSocketError,
    Dispatcher,
    ErrorCode,
    NodeNotRunning,
    RpcCallError,
    serve_control,
)

from .helpers import REQUEST_SIZE_MAX, Methods, RawConnection, call_in_thread, running_server

TEN_MB = 10 * 1024 * 1024

# A safety net, not a wait: a regression that makes a read block forever fails here instead of
# hanging the suite. Every test finishes in well under a second.
pytestmark = pytest.mark.timeout(60)


async def test_call_by_name_and_by_position_over_socket(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    async with running_server(socket_path, dispatcher):
        assert await call_in_thread(socket_path, "echo", {"text": "hello"}) == {"text": "hello"}
        assert await call_in_thread(socket_path, "add", [40, 2]) == 42
        assert await call_in_thread(socket_path, "node_info") == {
            "peer_id": "12D3KooWTest",
            "version": "0.1.0",
        }


async def test_one_client_makes_many_calls_on_one_connection(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    def many_calls() -> list[object]:
        with ControlClient(socket_path) as client:
            return [client.call("add", [i, i]) for i in range(20)]

    async with running_server(socket_path, dispatcher):
        assert await trio.to_thread.run_sync(many_calls) == [2 * i for i in range(20)]


async def test_pipelined_requests_are_answered_in_order(
    socket_path: Path, dispatcher: Dispatcher, methods: Methods
) -> None:
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "add", "params": [1]},
        {"jsonrpc": "2.0", "method": "record", "params": [{"n": 1}]},
        {"jsonrpc": "2.0", "id": 2, "method": "echo", "params": ["two"]},
        {"jsonrpc": "2.0", "id": 3, "method": "add", "params": [3]},
    ]
    async with running_server(socket_path, dispatcher):
        connection = await RawConnection.open(socket_path)
        await connection.send(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        replies = [await connection.read_reply() for _ in range(3)]
        await connection.aclose()
    assert [reply["id"] for reply in replies] == [1, 2, 3]
    assert [reply["result"] for reply in replies] == [1, {"text": "two"}, 3]
    assert methods.recorded == [{"n": 1}]


async def test_malformed_json_gets_parse_error_and_connection_keeps_serving(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    async with running_server(socket_path, dispatcher):
        connection = await RawConnection.open(socket_path)
        await connection.send(b'{"jsonrpc": "2.0", "method": "node_info", "id": 1\n')
        reply = await connection.read_reply()
        assert reply["error"]["code"] == ErrorCode.PARSE_ERROR and reply["id"] is None
        await connection.send(b"\n  \n" + b'{"jsonrpc":"2.0","method":"node_info","id":2}\r\n')
        reply = await connection.read_reply()
        assert reply["id"] == 2 and reply["result"]["version"] == "0.1.0"
        await connection.aclose()


async def test_unterminated_last_line_is_answered_at_end_of_input(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    async with running_server(socket_path, dispatcher):
        connection = await RawConnection.open(socket_path)
        await connection.send(b'{"jsonrpc":"2.0","method":"add","params":[5],"id":1}')
        await connection.stream.send_eof()
        assert (await connection.read_reply())["result"] == 5
        assert await connection.is_closed_by_server()
        await connection.aclose()


async def test_errors_reach_the_client_as_rpc_call_errors(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    async with running_server(socket_path, dispatcher):
        cases = [
            ("peers_teleport", None, ErrorCode.METHOD_NOT_FOUND, "peers_teleport"),
            ("add", {"a": "1"}, ErrorCode.INVALID_PARAMS, "param 'a' must be an integer"),
            ("echo", {}, ErrorCode.INVALID_PARAMS, "missing required param 'text'"),
            ("echo", {"text": "a", "txt": "b"}, ErrorCode.INVALID_PARAMS, "unknown param 'txt'"),
            ("fail_app", None, ErrorCode.NODE_ERROR, "still starting"),
        ]
        for method, params, code, fragment in cases:
            with pytest.raises(RpcCallError) as caught:
                await call_in_thread(socket_path, method, params)
            assert caught.value.code == code
            assert fragment in caught.value.message
        assert caught.value.data == {"retry": True}
        assert str(caught.value) == f"the node is still starting; retry (error {code})"


async def test_handler_bug_answers_internal_error_and_server_keeps_serving(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    async with running_server(socket_path, dispatcher):
        with capture_logs() as logs, pytest.raises(RpcCallError) as caught:
            await call_in_thread(socket_path, "fail_bug")
        assert caught.value.code == ErrorCode.INTERNAL_ERROR
        assert any(entry["event"] == "control.handler_failed" for entry in logs)
        assert await call_in_thread(socket_path, "add", [1, 2]) == 3


async def test_batch_and_notifications_through_call_raw(
    socket_path: Path, dispatcher: Dispatcher, methods: Methods
) -> None:
    notification = {"jsonrpc": "2.0", "method": "record", "params": [{"n": 1}]}
    batch = [
        {"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": 1},
        notification,
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        "junk",
    ]

    def exchange() -> list[object]:
        with ControlClient(socket_path) as client:
            return [
                client.call_raw(notification),
                client.call_raw([notification, notification]),
                client.call_raw(batch),
                client.call_raw([]),
                client.call("add", [7]),
            ]

    async with running_server(socket_path, dispatcher):
        (
            only_notification,
            only_notifications,
            replies,
            empty,
            after,
        ) = await trio.to_thread.run_sync(exchange)
    assert only_notification is None and only_notifications is None
    assert [reply["id"] for reply in replies] == [1, 2, None]
    assert replies[0]["result"] == 2
    assert replies[1]["error"]["code"] == ErrorCode.METHOD_NOT_FOUND
    assert replies[2]["error"]["code"] == ErrorCode.INVALID_REQUEST
    assert empty["error"]["code"] == ErrorCode.INVALID_REQUEST
    assert after == 7, "a notification must leave no stray reply on the connection"
    assert methods.recorded == [{"n": 1}] * 4


async def test_ten_megabyte_line_gets_error_and_new_connections_still_work(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    huge = {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": ["x" * TEN_MB]}

    def send_huge() -> object:
        with ControlClient(socket_path) as client:
            return client.call_raw(huge)

    async with running_server(socket_path, dispatcher):
        with capture_logs() as logs:
            reply = await trio.to_thread.run_sync(send_huge)
        assert reply == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": ErrorCode.INVALID_REQUEST,
                "message": f"request too large: over {REQUEST_SIZE_MAX} bytes",
            },
        }
        assert any(entry["event"] == "control.request_too_large" for entry in logs)
        assert await call_in_thread(socket_path, "echo", ["small"]) == {"text": "small"}


async def test_oversized_line_closes_only_its_own_connection(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    cap = 1000
    async with running_server(socket_path, dispatcher, request_size_max=cap):
        bystander = await RawConnection.open(socket_path)
        await bystander.send(b'{"jsonrpc":"2.0","method":"add","params":[1],"id":1}\n')
        assert (await bystander.read_reply())["result"] == 1
        offender = await RawConnection.open(socket_path)
        await offender.send(b"[" + b" " * cap)  # cap + 1 bytes, no newline: one past the cap
        reply = await offender.read_reply()
        assert reply["error"]["code"] == ErrorCode.INVALID_REQUEST
        assert reply["error"]["message"] == f"request too large: over {cap} bytes"
        assert await offender.is_closed_by_server()
        await offender.aclose()
        exact = b'{"jsonrpc":"2.0","method":"add","params":[2],"id":2}'
        await bystander.send(exact + b" " * (cap - len(exact)) + b"\n")  # exactly at the cap
        assert (await bystander.read_reply())["result"] == 2
        await bystander.aclose()


async def test_socket_is_mode_0600_even_with_a_permissive_umask(
    socket_dir: Path, socket_path: Path, dispatcher: Dispatcher
) -> None:
    previous = os.umask(0)
    try:
        async with running_server(socket_path, dispatcher):
            status = os.lstat(socket_path)
            assert stat.S_ISSOCK(status.st_mode)
            assert stat.S_IMODE(status.st_mode) == 0o600
            assert sorted(os.listdir(socket_dir)) == ["node.sock"], "no temporary dir left over"
    finally:
        os.umask(previous)


async def test_socket_file_is_removed_when_server_stops(
    socket_dir: Path, socket_path: Path, dispatcher: Dispatcher
) -> None:
    async with running_server(socket_path, dispatcher):
        assert socket_path.exists()
    assert not socket_path.exists()
    assert os.listdir(socket_dir) == []


async def start_server(socket_path: Path, dispatcher: Dispatcher) -> None:
    """Start a server and stop it at once; raises what serve_control raises before started()."""
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(
                partial(
                    serve_control, socket_path, dispatcher, request_size_max=100, connections_max=1
                )
            )
        except ControlSocketError as error:  # re-raised below, outside the nursery's group
            failure = error
        else:
            failure = None
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


def _leave_stale_socket(path: Path) -> None:
    """What a SIGKILLed node leaves behind: a socket file nobody listens on."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()


async def test_stale_socket_is_replaced(socket_path: Path, dispatcher: Dispatcher) -> None:
    _leave_stale_socket(socket_path)
    async with running_server(socket_path, dispatcher):
        assert await call_in_thread(socket_path, "add", [3]) == 3


async def test_second_server_on_a_live_socket_is_refused(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    async with running_server(socket_path, dispatcher):
        with pytest.raises(ControlSocketError, match="already serving"):
            await start_server(socket_path, dispatcher)
        assert await call_in_thread(socket_path, "add", [4]) == 4


async def test_regular_file_at_socket_path_is_refused_and_kept(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    socket_path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await start_server(socket_path, dispatcher)
    assert socket_path.read_text() == "precious"


async def test_socket_path_over_the_limit_is_refused(
    socket_dir: Path, dispatcher: Dispatcher
) -> None:
    deep = socket_dir / ("d" * 100)
    deep.mkdir()
    with pytest.raises(ControlSocketError, match="107-byte limit"):
        await start_server(deep / "node.sock", dispatcher)
    assert os.listdir(deep) == []


def test_client_says_no_node_is_running_when_socket_is_missing(socket_path: Path) -> None:
    with pytest.raises(NodeNotRunning) as caught, ControlClient(socket_path) as client:
        client.call("node_info")
    message = str(caught.value)
    assert message.startswith(f"no node is running at {socket_path.parent} ")
    assert f"socket {socket_path} not found" in message


def test_client_says_no_node_is_running_when_socket_is_stale(socket_path: Path) -> None:
    _leave_stale_socket(socket_path)
    with pytest.raises(NodeNotRunning, match="refused"), ControlClient(socket_path) as client:
        client.call("node_info")


async def test_connections_over_the_limit_are_told_busy_and_closed(
    socket_path: Path, dispatcher: Dispatcher
) -> None:
    request = b'{"jsonrpc":"2.0","method":"add","params":[1],"id":1}\n'
    async with running_server(socket_path, dispatcher, connections_max=2):
        held = [await RawConnection.open(socket_path) for _ in range(2)]
        for connection in held:  # a reply proves the server holds a slot for it
            await connection.send(request)
            assert (await connection.read_reply())["result"] == 1
        extra = await RawConnection.open(socket_path)
        busy = await extra.read_reply()
        assert busy["error"]["code"] == ErrorCode.SERVER_BUSY and busy["id"] is None
        assert "at most 2" in busy["error"]["message"]
        assert await extra.is_closed_by_server()
        await extra.aclose()
        await held[0].aclose()
        await trio.testing.wait_all_tasks_blocked()  # the server has seen the close
        replacement = await RawConnection.open(socket_path)
        await replacement.send(request)
        assert (await replacement.read_reply())["result"] == 1
        for connection in (held[1], replacement):
            await connection.aclose()


async def test_client_leaving_mid_call_does_not_stop_the_server(
    socket_path: Path, dispatcher: Dispatcher, methods: Methods
) -> None:
    async with running_server(socket_path, dispatcher):
        connection = await RawConnection.open(socket_path)
        await connection.send(b'{"jsonrpc":"2.0","method":"block","id":1}\n')
        await methods.blocked_started.wait()
        await connection.aclose()
        methods.release_blocked.set()  # the handler now answers a closed connection
        await trio.testing.wait_all_tasks_blocked()
        assert await call_in_thread(socket_path, "add", [9]) == 9


async def test_client_reply_size_cap_is_enforced(socket_path: Path, dispatcher: Dispatcher) -> None:
    def call_with_small_cap() -> object:
        with ControlClient(socket_path, reply_size_max=100) as client:
            return client.call("echo", ["y" * 500])

    async with running_server(socket_path, dispatcher):
        with pytest.raises(ControlConnectionError, match="reply over 100 bytes"):
            await trio.to_thread.run_sync(call_with_small_cap)


async def test_client_times_out_on_a_silent_node(
    socket_path: Path, dispatcher: Dispatcher, methods: Methods
) -> None:
    def call_with_short_timeout() -> object:
        with ControlClient(socket_path, timeout_s=0.05) as client:
            return client.call("block")

    async with running_server(socket_path, dispatcher):
        with pytest.raises(ControlConnectionError, match=r"no reply from the node within 0\.05 s"):
            await trio.to_thread.run_sync(call_with_short_timeout)
        methods.release_blocked.set()


def test_client_module_imports_without_trio_or_structlog() -> None:
    code = (
        "import sys, prsm_node.control.client, prsm_node.control;"
        "loaded = {'trio', 'structlog', 'libp2p'} & set(sys.modules);"
        "sys.exit(f'loaded: {sorted(loaded)}' if loaded else 0)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
