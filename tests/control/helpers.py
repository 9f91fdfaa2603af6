"""Shared test fixtures' building blocks: a dispatcher with test methods, a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from prsm_node.control import ControlClient, Dispatcher, ErrorCode, Param, RpcError, serve_control
from prsm_node.control.protocol import is_valid_id

REQUEST_SIZE_MAX = 1024 * 1024

# A bound on how long a raw read may block, so a server that never answers fails the test with
# TooSlowError instead of hanging it; replies on loopback come in well under a millisecond.
READ_DEADLINE_S = 10.0


class Methods:
    """Async handlers for tests, with what they saw, so tests can assert on side effects."""

    def __init__(self) -> None:
        self.recorded: list[object] = []
        self.blocked_started = trio.Event()
        self.release_blocked = trio.Event()

    async def echo(self, text: str) -> dict[str, object]:
        return {"text": text}

    async def add(self, a: int, b: int = 0) -> int:
        return a + b

    async def scale(self, value: float, factor: float = 2.0) -> float:
        return value * factor

    async def settings(self, enabled: bool, tags: list, note: str | None = None) -> dict:
        return {"enabled": enabled, "tags": tags, "note": note}

    async def record(self, value: object = None) -> str:
        self.recorded.append(value)
        return "recorded"

    async def node_info(self) -> dict[str, object]:
        return {"peer_id": "12D3KooWTest", "version": "0.1.0"}

    async def fail_app(self) -> None:
        raise RpcError(ErrorCode.NODE_ERROR, "the node is still starting; retry", {"retry": True})

    async def fail_bug(self) -> None:
        raise KeyError("a bug in a handler")

    async def bad_result(self) -> object:
        return {"not json": object()}

    async def block(self) -> str:
        self.blocked_started.set()
        await self.release_blocked.wait()
        return "released"


def make_dispatcher(methods: Methods) -> Dispatcher:
    dispatcher = Dispatcher()
    dispatcher.register("echo", methods.echo, [Param("text", str)])
    dispatcher.register("add", methods.add, [Param("a", int), Param("b", int, 0)])
    dispatcher.register(
        "scale", methods.scale, [Param("value", float), Param("factor", float, 2.0)]
    )
    dispatcher.register(
        "settings",
        methods.settings,
        [Param("enabled", bool), Param("tags", list, []), Param("note", str, None)],
    )
    dispatcher.register("record", methods.record, [Param("value", dict, None)])
    dispatcher.register("node_info", methods.node_info)
    dispatcher.register("fail_app", methods.fail_app)
    dispatcher.register("fail_bug", methods.fail_bug)
    dispatcher.register("bad_result", methods.bad_result)
    dispatcher.register("block", methods.block)
    return dispatcher


@asynccontextmanager
async def running_server(
    socket_path: Path,
    dispatcher: Dispatcher,
    *,
    request_size_max: int = REQUEST_SIZE_MAX,
    connections_max: int = 8,
) -> AsyncIterator[None]:
    """A real control server on `socket_path` for the body's duration; stopped on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                serve_control,
                socket_path,
                dispatcher,
                request_size_max=request_size_max,
                connections_max=connections_max,
            )
        )
        yield
        nursery.cancel_scope.cancel()


async def call_in_thread(socket_path: Path, method: str, params: object = None) -> object:
    """ControlClient.call from a worker thread, as the CLI would from its own process."""

    def call() -> object:
        with ControlClient(socket_path, timeout_s=10.0) as client:
            return client.call(method, params)  # type: ignore[arg-type]

    return await trio.to_thread.run_sync(call)


class RawConnection:
    """A plain trio stream to the server, for what a well-behaved client never sends."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    @classmethod
    async def open(cls, socket_path: Path) -> RawConnection:
        return cls(await trio.open_unix_socket(str(socket_path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_reply(self) -> object:
        """The next reply line, decoded; fails the test at end of input."""
        with trio.fail_after(READ_DEADLINE_S):
            while b"\n" not in self._buffer:
                chunk = await self.stream.receive_some(65536)
                assert chunk, "server closed the connection before replying"
                self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    async def is_closed_by_server(self) -> bool:
        """True if the server has closed its end (end of input or reset), with nothing unread."""
        try:
            with trio.fail_after(READ_DEADLINE_S):
                chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return True
        return chunk == b"" and not self._buffer

    async def aclose(self) -> None:
        await self.stream.aclose()


def assert_valid_response(response: object) -> None:
    """One JSON-RPC 2.0 response object, exactly as spec section 5 defines it."""
    assert isinstance(response, dict), response
    assert response.get("jsonrpc") == "2.0", response
    assert "id" in response and is_valid_id(response["id"]), response
    assert ("result" in response) != ("error" in response), response
    assert set(response) <= {"jsonrpc", "id", "result", "error"}, response
    if "error" in response:
        error = response["error"]
        assert isinstance(error, dict), response
        assert set(error) <= {"code", "message", "data"}, response
        assert isinstance(error["code"], int) and not isinstance(error["code"], bool)
        assert isinstance(error["message"], str) and error["message"], response
