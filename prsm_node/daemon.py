"""The daemon: one root nursery that owns the host, the peer manager and the control socket.

Order of start (trio: services start with `nursery.start`, so each is ready before the
next): data dir lock -> identity -> libp2p host (not listening) -> services, each with its
protocols registered -> control socket answering -> host listening -> peer manager
dialling. Listening last means no peer can open a stream to a protocol not yet served: an
early dialler's DHT bootstrap once failed that way and the node never entered the
other's routing table. An address that cannot be listened on stops the node (ListenError).
Shutdown (SIGINT, SIGTERM or `node_shutdown`) cancels the root scope: streams close,
peers.json is written, the socket and the lock are removed, and the process exits 0.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
import trio
from nacl.signing import SigningKey

from prsm_node import __version__
from prsm_node.config import NodeConfig
from prsm_node.control import Dispatcher, serve_control
from prsm_node.datadir import DataDir, DataDirLock
from prsm_node.dht_api import register_dht_methods
from prsm_node.dht_service import DhtService, unix_ms
from prsm_node.errors import ListenError
from prsm_node.identity import read_seed
from prsm_node.jobs.runner import JobRunner
from prsm_node.jobs_api import JobsMethods
from prsm_node.jobs_service import JobsService
from prsm_node.ledger_api import LedgerMethods
from prsm_node.ledger_genesis import GENESIS_FILE_NAME, ensure_genesis
from prsm_node.ledger_service import LedgerService
from prsm_node.loop_monitor import LoopMonitor
from prsm_node.net.host import ConnectionEvent, build_host, listen
from prsm_node.net.peers import PeerManager
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import Wire
from prsm_node.node_api import register_node_methods
from prsm_node.registry.api import RegistryMethods
from prsm_node.registry.service import RegistryService
from prsm_node.storage_api import register_storage_methods
from prsm_node.storage_replication import Replicator
from prsm_node.storage_service import StorageService
from prsm_node.task_steps import SlowStepMonitor

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_S = 0.1
JOBS_DIR_NAME = "jobs"  # work dirs of running jobs, under the data dir


@dataclass(slots=True, kw_only=True)
class NodeContext:
    """What the control methods may read and drive; built before the host listens."""

    data_dir: DataDir
    config: NodeConfig
    host: Any
    peers: PeerManager
    wire: Wire
    scores: PeerScores
    dht: DhtService
    storage: StorageService
    replicator: Replicator
    ledger: LedgerService
    jobs: JobsService
    registry: RegistryService
    started_monotonic: float
    shutdown_requested: trio.Event
    loop_monitor: LoopMonitor | None

    def peer_id(self) -> str:
        return self.host.get_id().to_base58()

    def listen_addresses(self) -> list[str]:
        return [str(address) for address in self.host.get_addrs()]


def refuse_optimised_python() -> None:
    """Our invariants are asserts (STYLE.md rule 4); `python -O` would strip them."""
    if not __debug__:
        raise SystemExit("prsm-node refuses to run under python -O: it strips its invariant checks")


async def run_node(data_dir: DataDir, config: NodeConfig) -> None:
    """Run until a signal or node_shutdown; raises UserError for operator mistakes."""
    refuse_optimised_python()
    data_dir.check_socket_path()
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        await _run_locked(data_dir, config)
    finally:
        lock.release()
        log.info("node.stopped", data_dir=str(data_dir.root))


async def _run_locked(data_dir: DataDir, config: NodeConfig) -> None:
    seed = read_seed(data_dir.key_file)
    network = config.network
    send_events, receive_events = trio.open_memory_channel[ConnectionEvent](4 * network.peers_max)
    host = build_host(seed, network, send_events)
    scores = PeerScores(peers_tracked_max=4 * network.peers_max)
    wire = Wire(
        host,
        frame_size_max=network.frame_size_max,
        request_timeout_s=network.request_timeout_ms / 1000,
        inbound_requests_max=network.inbound_requests_max,
        scores=scores,
    )
    listen_failure: ListenError | None = None
    async with host.run(listen_addrs=[]), trio.open_nursery() as nursery:
        wire.bind(nursery)
        context = _build_services(data_dir, config, seed, host, wire, scores)
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        nursery.start_soon(_stop_on_request, context.shutdown_requested, nursery.cancel_scope)
        await _start_services(nursery, context)
        try:
            await _go_online(nursery, context, receive_events)
        except ListenError as error:  # raised below: inside the nursery it would be grouped
            listen_failure = error
            nursery.cancel_scope.cancel()
        else:
            log.info(
                "node.started",
                peer_id=context.peer_id(),
                listen=context.listen_addresses(),
                socket=str(data_dir.socket_path),
                version=__version__,
                pid=os.getpid(),
            )
            _announce_ready(context)
            _freeze_startup_heap(context.loop_monitor)
    if listen_failure is not None:
        raise listen_failure


def _freeze_startup_heap(monitor: LoopMonitor | None) -> None:
    """Move what start-up allocated (modules, libp2p, services: ~110k objects) out of the
    collector's reach. Those objects live as long as the node, yet every full collection
    walked them: ~90 ms of CPU per pause, measured at 1.1-1.6 s of wall time on a loaded
    machine in a 30-node devnet (node_statistics.event_loop.gc_pause_ms_max), stalling
    every task. After the freeze a full collection walks only what was allocated since.
    This one deliberate collection is not a pause the monitor should report."""
    if monitor is not None:
        monitor.unwatch_gc()
    gc.collect()
    gc.freeze()
    if monitor is not None:
        monitor.watch_gc()
    log.debug("node.heap_frozen", objects=gc.get_freeze_count())


def _build_services(
    data_dir: DataDir, config: NodeConfig, seed: bytes, host: Any, wire: Wire, scores: PeerScores
) -> NodeContext:
    """Every service, wired to the others; nothing runs yet."""
    peers = PeerManager(
        host=host,
        wire=wire,
        scores=scores,
        config=config.network,
        peers_file=data_dir.peers_file,
        rng=random.Random(),
    )
    peers.load()
    dht = DhtService(
        core_config=config.dht.core_config(),
        seed=seed,
        own_peer_id=host.get_id().to_base58(),
        wire=wire,
        peers=peers,
        host=host,
        data_dir=data_dir.root,
        rng=random.Random(),
    )
    peers.connection_listeners.append(dht.peer_connected)
    storage = StorageService(
        config=config.storage,
        network=config.network,
        data_dir=data_dir.root,
        wire=wire,
        peers=peers,
        host=host,
        dht=dht,
    )
    public_key = bytes(SigningKey(seed).verify_key)
    genesis = ensure_genesis(data_dir.root / GENESIS_FILE_NAME, public_key, unix_ms())
    ledger = LedgerService(
        genesis=genesis,
        seed=seed,
        data_dir=data_dir.root,
        config=config.pbft.core_config(),
        wire=wire,
        peers=peers,
        dht=dht,
        host=host,
    )
    (data_dir.root / JOBS_DIR_NAME).mkdir(mode=0o700, exist_ok=True)
    runner = JobRunner(config.jobs, work_root=data_dir.root / JOBS_DIR_NAME,
                       hidden=(data_dir.root,))
    return NodeContext(
        ledger=ledger,
        jobs=JobsService(ledger=ledger, storage=storage, runner=runner, wire=wire),
        registry=RegistryService(
            config=config.registry,
            seed=seed,
            host=host,
            wire=wire,
            peers=peers,
            scores=scores,
            storage=storage,
            data_dir=data_dir.root,
            version=__version__,
        ),
        data_dir=data_dir,
        config=config,
        host=host,
        peers=peers,
        wire=wire,
        scores=scores,
        dht=dht,
        storage=storage,
        replicator=Replicator(storage, wire),
        started_monotonic=time.monotonic(),
        shutdown_requested=trio.Event(),
        loop_monitor=_loop_monitor(config.log.slow_step_ms, config.log.count_task_steps),
    )


def _loop_monitor(threshold_ms: int, count_task_steps: bool) -> LoopMonitor | None:
    """The monitor (its heartbeat starts with the services); the per-step instrument only
    when asked for, since it costs CPU on every task step."""
    if threshold_ms == 0:
        return None
    task_steps = None
    if count_task_steps:
        task_steps = SlowStepMonitor(threshold_ms)
        trio.lowlevel.add_instrument(task_steps)
    monitor = LoopMonitor(threshold_ms, task_steps)
    monitor.watch_gc()
    return monitor


async def _start_services(nursery: trio.Nursery, context: NodeContext) -> None:
    """Start in dependency order: the block store and the registry (whose pubsub must run
    before connections arrive) are open before the control socket takes calls; every
    service has registered its protocols before the host listens (`_go_online`)."""
    if context.loop_monitor is not None:
        nursery.start_soon(context.loop_monitor.run)
    dispatcher = Dispatcher()
    register_node_methods(dispatcher, context)
    register_dht_methods(dispatcher, context.dht)
    register_storage_methods(dispatcher, context.storage, context.replicator)
    LedgerMethods(context.ledger).register(dispatcher)
    registry_methods = RegistryMethods(context.registry)
    registry_methods.register(dispatcher)
    JobsMethods(context.ledger, context.storage, context.jobs,
                announce=registry_methods.registry_announce_model).register(dispatcher)
    await nursery.start(context.storage.run)
    await nursery.start(context.registry.run)
    control = context.config.control
    await nursery.start(
        partial(
            serve_control,
            context.data_dir.socket_path,
            dispatcher,
            request_size_max=control.request_size_max,
            connections_max=control.connections_max,
        )
    )
    await nursery.start(context.dht.run)
    await nursery.start(context.ledger.run)
    await nursery.start(context.jobs.run)
    await nursery.start(context.replicator.run)


async def _go_online(
    nursery: trio.Nursery,
    context: NodeContext,
    connection_events: trio.MemoryReceiveChannel[ConnectionEvent],
) -> None:
    """Listen, then dial: peers reach a node that serves all its protocols already."""
    await listen(context.host, list(context.config.network.listen))
    context.dht.listening()
    context.registry.listening()
    await nursery.start(context.peers.run, connection_events)


def _announce_ready(context: NodeContext) -> None:
    """One plain line on stdout for whoever started us (devnet, scripts)."""
    print(
        f"prsm-node {__version__} ready: peer id {context.peer_id()}, "
        f"socket {context.data_dir.socket_path}",
        flush=True,
    )
    sys.stdout.flush()


async def _stop_on_request(requested: trio.Event, scope: trio.CancelScope) -> None:
    await requested.wait()
    log.info("node.stopping", reason="node_shutdown")
    # The grace lets the node_shutdown reply (and any other in flight) reach its client.
    await trio.sleep(SHUTDOWN_GRACE_S)
    scope.cancel()


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("node.stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return
