"""The control server: JSON-RPC 2.0 lines over a Unix stream socket, like geth's IPC.

Rules and invariants of this file:
1. The socket file is never reachable by other users. It is bound inside a fresh private
   directory (mode 0700, from mkdtemp) next to its final path, chmod'ed to 0600, and only then
   renamed into place. The process umask is not touched: it is process-wide, and changing it,
   even briefly, would race with files other threads create.
2. Memory per connection is bounded by `request_size_max` + 1 bytes of line buffer. A line
   with no newline within the cap gets one -32600 error line and the connection is closed; the
   rest of the line is never read. Other connections are unaffected.
3. At most `connections_max` connections are served at once. One more is told so with a
   -32001 error line and closed at once, rather than queued: a CLI waiting in a queue
   behind an idle connection would look hung, while an error says what is wrong.
4. Requests on one connection are answered in order, one at a time (pipelining is allowed).
   Blank lines are skipped; a last line without a newline is answered at end of input.
5. The socket file is removed when the server stops, but only if it is still ours (same inode),
   so a stopping server never deletes the socket of one that replaced it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
from functools import partial
from pathlib import Path

import structlog
import trio

from prsm_node.control.jsonrpc import Dispatcher
from prsm_node.control.protocol import ErrorCode, encode, error_response

__all__ = ["ControlSocketError", "serve_control"]

log = structlog.get_logger()

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL (unix(7)).
SOCKET_PATH_BYTES_MAX = 107

# Read size per receive call; replies and requests are small, and this bounds each copy.
_RECEIVE_CHUNK_BYTES = 64 * 1024

# The kernel caps this at net.core.somaxconn; connections over connections_max are accepted
# and told so, so the backlog only needs to absorb bursts between accepts.
_LISTEN_BACKLOG = 64


class ControlSocketError(Exception):
    """The control socket cannot be set up; the message names the path and the reason."""


class _LineTooLarge(Exception):
    pass


class _LineReader:
    """Newline-delimited lines from a stream, never buffering more than `line_size_max` + 1."""

    def __init__(self, stream: trio.abc.ReceiveStream, line_size_max: int) -> None:
        self._stream = stream
        self._line_size_max = line_size_max
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for a newline

    async def next_line(self) -> bytes | None:
        """The next line without its newline; None at end of input; _LineTooLarge past the cap."""
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline >= 0:
                if newline > self._line_size_max:
                    raise _LineTooLarge
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            if len(self._buffer) > self._line_size_max:
                raise _LineTooLarge
            room = self._line_size_max + 1 - len(self._buffer)
            chunk = await self._stream.receive_some(min(_RECEIVE_CHUNK_BYTES, room))
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                self._scanned = 0
                return line or None
            self._buffer += chunk
            assert len(self._buffer) <= self._line_size_max + 1


async def serve_control(
    socket_path: Path,
    dispatcher: Dispatcher,
    *,
    request_size_max: int,
    connections_max: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `dispatcher` on `socket_path` until cancelled; `started()` once it accepts.

    Raises ControlSocketError before `started()` if the path is too long, is not a socket,
    or another live server answers on it. A stale socket left by a killed node is replaced.
    """
    if request_size_max < 1 or connections_max < 1:
        raise ValueError("request_size_max and connections_max must be at least 1")
    socket_path = Path(socket_path)
    await _refuse_live_or_foreign(socket_path)
    sock, identity = await _bind_private(socket_path)
    try:
        listener = trio.SocketListener(sock)
        handler = partial(
            _handle_connection,
            dispatcher=dispatcher,
            slots=trio.CapacityLimiter(connections_max),
            request_size_max=request_size_max,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            log.info(
                "control.listening",
                socket=str(socket_path),
                request_size_max=request_size_max,
                connections_max=connections_max,
            )
            task_status.started()
    finally:
        sock.close()
        _remove_if_ours(socket_path, identity)
        log.info("control.stopped", socket=str(socket_path))


def _check_length(path: Path) -> None:
    length = len(os.fsencode(path))
    if length > SOCKET_PATH_BYTES_MAX:
        raise ControlSocketError(
            f"control socket path {path} is {length} bytes, over the {SOCKET_PATH_BYTES_MAX}-byte "
            "limit of Unix sockets (including a temporary name while binding): "
            "use a data dir with a shorter path"
        )


async def _refuse_live_or_foreign(socket_path: Path) -> None:
    """Refuse a path held by a live server or by a non-socket; a stale socket is fine."""
    try:
        mode = os.lstat(socket_path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(f"{socket_path} exists and is not a socket; move it away")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            await probe.connect(os.fspath(socket_path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("control.stale_socket", socket=str(socket_path))
            return
        except OSError as error:
            raise ControlSocketError(
                f"cannot probe the control socket {socket_path}: {error}"
            ) from None
    raise ControlSocketError(
        f"another process is already serving the control socket {socket_path}; "
        "is a node already running on this data dir?"
    )


async def _bind_private(socket_path: Path) -> tuple[trio.socket.SocketType, tuple[int, int]]:
    """A listening socket at `socket_path`, mode 0600 from its creation (rule 1).

    Returns the socket and the (device, inode) of its file, to remove only our own file later.
    """
    _check_length(socket_path)
    try:
        private_dir = tempfile.mkdtemp(prefix=".c", dir=socket_path.parent)
    except OSError as error:
        raise ControlSocketError(
            f"cannot create the control socket {socket_path}: {error}"
        ) from None
    temporary_path = Path(private_dir) / "s"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _check_length(temporary_path)
        await sock.bind(os.fspath(temporary_path))
        os.chmod(temporary_path, 0o600)
        sock.listen(_LISTEN_BACKLOG)
        os.replace(temporary_path, socket_path)
        status = os.stat(socket_path)
    except OSError as error:
        sock.close()
        raise ControlSocketError(f"cannot bind the control socket {socket_path}: {error}") from None
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_path)
        os.rmdir(private_dir)
    return sock, (status.st_dev, status.st_ino)


def _remove_if_ours(socket_path: Path, identity: tuple[int, int]) -> None:
    try:
        status = os.lstat(socket_path)
        if (status.st_dev, status.st_ino) == identity:
            os.unlink(socket_path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("control.socket_not_removed", socket=str(socket_path), error=str(error))


async def _handle_connection(
    stream: trio.SocketStream,
    *,
    dispatcher: Dispatcher,
    slots: trio.CapacityLimiter,
    request_size_max: int,
) -> None:
    """Serve one client connection; a client going away is normal, never an error."""
    async with stream:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            log.warning("control.connection_rejected", connections_max=slots.total_tokens)
            message = (
                f"too many control connections (at most {slots.total_tokens}); "
                "close idle clients and retry"
            )
            busy = error_response(None, ErrorCode.SERVER_BUSY, message)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(encode(busy) + b"\n")
            return
        try:
            reason = await _serve_lines(stream, dispatcher, request_size_max)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reason = "client disconnected"
        finally:
            slots.release()
        log.debug("control.connection_closed", reason=reason)


async def _serve_lines(
    stream: trio.SocketStream, dispatcher: Dispatcher, request_size_max: int
) -> str:
    """Answer lines in order until end of input or an oversized line; returns why it ended."""
    reader = _LineReader(stream, request_size_max)
    while True:
        try:
            line = await reader.next_line()
        except _LineTooLarge:
            log.warning("control.request_too_large", request_size_max=request_size_max)
            message = f"request too large: over {request_size_max} bytes"
            await stream.send_all(
                encode(error_response(None, ErrorCode.INVALID_REQUEST, message)) + b"\n"
            )
            return "request too large"
        if line is None:
            return "end of input"
        if not line.strip():
            continue
        reply = await dispatcher.handle_payload(line)
        if reply is not None:
            await stream.send_all(reply + b"\n")
