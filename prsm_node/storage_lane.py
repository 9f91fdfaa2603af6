"""A transfer lane: a child process of the node that receives fetched blocks on its own core.

Why: one fetch's receive (Noise, Yamux, msgpack, sha256 and the file write of every block)
ran in the node's one event loop and cost more CPU per byte than one bare py-libp2p stream,
so no number of providers could make a fetch faster than one stream (BENCHMARKS.md, #5). A
lane is a process with its own libp2p host: the node (``prsm_node.storage_lanes``) hands it
want requests, it asks the provider over ``/prsm/blocks/1.0.0``, hashes each block against
its CID and writes it to a temp file of the node's block store, and answers with the file's
name; the block's bytes never enter the node's process (only a dag-pb node's, whose links
the fetch session needs). The node adopts the file into its store (``BlockBatch.adopt``).

Rules:
1. The lane holds no state of the node: no key of the node (a fresh libp2p identity per
   process; a provider sees an ordinary peer), no store, no database. It writes only new
   files under the temp directory it is given, named ``<cid>.<pid>.<n>`` like the store's
   own temp files (removed with them when the store next opens).
2. A block is reported as staged only after its bytes hashed to the wanted CID and its file
   was written whole. Anything else the provider answered (don't have, a wrong block, a
   frame that does not decode) goes back to the node as the frame itself, so the fetch
   session judges it exactly as it judges an in-process answer (``storage.exchange``).
3. The pipe protocol (stdin: wants; stdout: one answer per want, in any order) uses the
   frames of ``prsm_node.net.framing``, each capped before it is read; the process's own
   stdout is pointed at stderr, so nothing else reaches the pipe. The lane exits when
   its stdin ends (the node closed it or died) and removes every file it wrote and did not
   report.
4. Hashing and the file write run in a worker thread (both release the GIL), so the lane's
   event loop keeps reading the stream meanwhile.
5. A connection to a provider with no want in flight for ``--idle-close-s`` is closed: a
   lane must not hold a slot of the provider's ``network.peers_max`` between fetches.

Pipe messages: the node sends ``[seq, peer, [address, ...], cid_bytes]``; the lane answers
``[seq, status, staged, frames]`` with status ``ok``, ``unreachable`` (no address of the
provider could be dialled: the node may still reach it, through a connection the provider
opened), ``failed`` (no answer: stream or timeout) or ``malformed`` (the answer was not a
list of frames), ``staged`` a list of
``[cid_bytes, size, temp_name, node_bytes_or_None]`` and ``frames`` the other frames. The
first message on stdout, once the host runs, is ``[0, peer_id, [], []]``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from prsm_node.config import LogConfig, NetworkConfig
from prsm_node.logs import configure_logging
from prsm_node.net.framing import FrameError, encode_frame, read_frame
from prsm_node.net.host import build_host, dial_first
from prsm_node.net.ping import PING_PROTOCOL, answer_ping
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import RequestFailed, Wire
from prsm_node.storage_fetch import (
    BLOCKS_PROTOCOL,
    STATUS_FAILED,
    STATUS_MALFORMED,
    STATUS_OK,
    STATUS_UNREACHABLE,
)
from storage.cid import CODEC_DAG_PB, Cid
from storage.durable import start_writeback, write_all
from storage.errors import InvalidMessageError, StorageError
from storage.exchange_messages import BlockReply, WantBlocks, decode_message, encode_message

READY_SEQ = 0
IDLE_CLOSE_S = 30.0
DIAL_ADDRESSES_MAX = 8
DIAL_TIMEOUT_S = 10.0
UNREACHABLE_S = 60.0
UNREACHABLE_PEERS_MAX = 1024
LANE_MESSAGE_MAX = 64 * 1024
"""A want from the node: a peer id, a few addresses and a CID."""


class PipeStream:
    """``read(n)`` over a trio receive stream, as ``prsm_node.net.framing`` reads."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream

    async def read(self, n: int | None = None) -> bytes:
        return await self._stream.receive_some(n)


def _write_block_file(temp_dir: Path, name: str, data: bytes, durable: bool) -> None:
    descriptor = os.open(temp_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o644)
    try:
        write_all(descriptor, data)
        if durable:
            start_writeback(descriptor)
    finally:
        os.close(descriptor)


class Lane:
    """The lane's event loop side: one task per want (module rules)."""

    def __init__(self, host: Any, wire: Any, *, temp_dir: Path, durable: bool,
                 frame_size_max: int, idle_close_s: float = IDLE_CLOSE_S) -> None:
        self._host = host
        self._wire = wire
        self._temp_dir = temp_dir
        self._durable = durable
        self._frame_size_max = frame_size_max
        self._idle_close_s = idle_close_s
        self._names = itertools.count()
        self._unreported: set[str] = set()
        self._out_lock = trio.Lock()
        self._connecting: dict[str, trio.Lock] = {}
        self._in_flight: dict[str, int] = {}  # wants in flight per provider
        self._unreachable_until: dict[str, float] = {}  # providers that failed a dial
        self._idle_since: dict[str, float] = {}  # providers with none, since when

    async def serve(self, stdin: trio.abc.ReceiveStream, stdout: trio.abc.SendStream) -> None:
        self._stdout = stdout
        await self._answer([READY_SEQ, self._host.get_id().to_base58(), [], []])
        reader = PipeStream(stdin)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_idle)
                while True:
                    try:
                        want = await read_frame(reader, LANE_MESSAGE_MAX)
                    except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError):
                        break  # the node closed the pipe (or died): rule 3
                    nursery.start_soon(self._fetch, *want)
                nursery.cancel_scope.cancel()
        finally:
            for name in self._unreported:
                (self._temp_dir / name).unlink(missing_ok=True)

    async def _fetch(self, seq: int, peer: str, addresses: list[str], cid_bytes: bytes) -> None:
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        self._idle_since.pop(peer, None)
        try:
            await self._fetch_one(seq, peer, addresses, Cid.from_bytes(cid_bytes))
        finally:
            self._in_flight[peer] -= 1
            if not self._in_flight[peer]:
                del self._in_flight[peer]
                self._idle_since[peer] = trio.current_time()

    async def _close_idle(self) -> None:
        """Rule 5."""
        while True:
            await trio.sleep(self._idle_close_s / 2)
            now = trio.current_time()
            for peer, since in list(self._idle_since.items()):
                if now - since >= self._idle_close_s:
                    del self._idle_since[peer]
                    with contextlib.suppress(Exception):  # already gone: nothing to close
                        await self._host.disconnect(ID.from_base58(peer))

    async def _fetch_one(self, seq: int, peer: str, addresses: list[str], cid: Cid) -> None:
        if not await self._reach(peer, addresses):
            await self._answer([seq, STATUS_UNREACHABLE, [], []])
            return
        want = encode_message(WantBlocks(request_id=seq, cids=(cid,)))
        try:
            answer = await self._wire.request(peer, BLOCKS_PROTOCOL, want)
        except RequestFailed:
            answer = None
        if answer is None:
            await self._answer([seq, STATUS_FAILED, [], []])
        elif not isinstance(answer, list) or not all(isinstance(f, bytes) for f in answer):
            await self._answer([seq, STATUS_MALFORMED, [], []])
        else:
            staged, frames = await trio.to_thread.run_sync(self._stage_all, cid, answer)
            await self._answer([seq, STATUS_OK, staged, frames])

    def _stage_all(self, cid: Cid, frames: list[bytes]) -> tuple[list[list[Any]], list[bytes]]:
        """Write every block of ``frames`` that is ``cid`` and hashes to it (rule 2)."""
        staged: list[list[Any]] = []
        others: list[bytes] = []
        for frame in frames:
            try:
                message = decode_message(frame)
            except InvalidMessageError:
                others.append(frame)
                continue
            if not isinstance(message, BlockReply) or message.cid != cid \
                    or not cid.matches(message.data) or staged:
                others.append(frame)
                continue
            name = f"{cid}.{os.getpid()}.{next(self._names)}"
            self._unreported.add(name)
            _write_block_file(self._temp_dir, name, message.data, self._durable)
            node = message.data if cid.codec == CODEC_DAG_PB else None
            staged.append([cid.to_bytes(), len(message.data), name, node])
        return staged, others

    async def _reach(self, peer: str, addresses: list[str]) -> bool:
        if self._host.get_network().get_connections(ID.from_base58(peer)):
            return True
        lock = self._connecting.setdefault(peer, trio.Lock())
        try:
            async with lock:  # one dial per provider, however many wants wait for it
                return await self._dial(peer, addresses)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._connecting.pop(peer, None)

    async def _dial(self, peer: str, addresses: list[str]) -> bool:
        """Connected to ``peer``, or dialled within ``DIAL_TIMEOUT_S`` for all its addresses;
        a failure is remembered for ``UNREACHABLE_S``, so the wants queued behind the dial
        (and those that follow) are answered at once."""
        if self._host.get_network().get_connections(ID.from_base58(peer)):
            return True
        if trio.current_time() < self._unreachable_until.get(peer, -math.inf):
            return False
        with trio.move_on_after(DIAL_TIMEOUT_S):
            if await dial_first(self._host, peer, addresses[:DIAL_ADDRESSES_MAX],
                                timeout_s=DIAL_TIMEOUT_S) is not None:
                self._unreachable_until.pop(peer, None)
                return True
        self._unreachable_until[peer] = trio.current_time() + UNREACHABLE_S
        if len(self._unreachable_until) > UNREACHABLE_PEERS_MAX:
            self._unreachable_until.pop(next(iter(self._unreachable_until)))
        return False

    async def _answer(self, message: list[Any]) -> None:
        frame = encode_frame(message, self._frame_size_max + LANE_MESSAGE_MAX)
        async with self._out_lock:
            await self._stdout.send_all(frame)
        for entry in message[2] if message[1] == STATUS_OK else ():
            self._unreported.discard(entry[2])


async def _main(arguments: argparse.Namespace) -> None:
    network = replace(NetworkConfig(), frame_size_max=arguments.frame_size_max)
    events_in, events_out = trio.open_memory_channel(64)
    host = build_host(bytes(SigningKey.generate()), network, events_in)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # rule 3: stray output (a log line,
    # a library's print) goes to stderr, never into the answers on the pipe
    configure_logging(None, LogConfig())  # stderr, the node's default level
    async with host.run(listen_addrs=[]), trio.open_nursery() as nursery:
        nursery.start_soon(_drain, events_out)
        wire = Wire(host, frame_size_max=arguments.frame_size_max,
                    request_timeout_s=arguments.request_timeout_s, inbound_requests_max=1,
                    scores=PeerScores())
        wire.bind(nursery)
        wire.register(PING_PROTOCOL, answer_ping)  # a provider's liveness check succeeds
        lane = Lane(host, wire, temp_dir=Path(arguments.temp_dir), durable=arguments.durable,
                    frame_size_max=arguments.frame_size_max,
                    idle_close_s=arguments.idle_close_s)
        await lane.serve(stdin, stdout)
        nursery.cancel_scope.cancel()


async def _drain(events: trio.MemoryReceiveChannel[Any]) -> None:
    async for _event in events:
        pass  # the lane keeps no connection table of its own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--frame-size-max", type=int, required=True)
    parser.add_argument("--request-timeout-s", type=float, required=True)
    parser.add_argument("--durable", action="store_true")
    parser.add_argument("--idle-close-s", type=float, default=IDLE_CLOSE_S)
    arguments = parser.parse_args(argv)
    try:
        trio.run(_main, arguments)
    except KeyboardInterrupt:
        return 130
    except StorageError as error:
        print(f"storage lane: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
