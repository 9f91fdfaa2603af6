"""Node configuration: one schema, from which the defaults, the checks and the docs all come.

Rules:
1. Every key lives in `SCHEMA` with its type, default, bounds and a one-line reason. The
   file `node.toml.example` and the `node.toml` that `prsm-node init` writes are rendered
   from it (`render_toml`), and a test keeps the example in step, so docs cannot drift.
2. Loading never half-succeeds: an unknown key, a wrong type (a bool is not an int), an out
   of range value, a bad multiaddr or a broken relation between keys raises `ConfigError`
   naming the file, the dotted key and the reason.
3. Flags override the file after it is checked, and are checked the same way.

Limits follow TigerStyle ("put a limit on everything"): each bound is a `*_max` key.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from consensus.replica_effects import ReplicaConfig
from dht.node_effects import DhtConfig
from prsm_node.errors import ConfigError

Check = Callable[[Any], str | None]

LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _between(low: int, high: int) -> Check:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def multiaddr_problem(text: str, *, need_peer_id: bool) -> str | None:
    """Why `text` is not a usable multiaddr, or None. multiaddr is imported lazily (start time)."""
    import multiaddr

    try:
        address = multiaddr.Multiaddr(text)
    except Exception as error:  # the library raises several unrelated types for bad input
        return f"invalid multiaddr {text!r}: {error}"
    names = [protocol.name for protocol in address.protocols()]
    if not names or names[0] not in ("ip4", "ip6", "dns", "dns4", "dns6"):
        return f"invalid multiaddr {text!r}: must start with /ip4, /ip6 or /dns"
    if "tcp" not in names:
        return f"invalid multiaddr {text!r}: only TCP transports are supported"
    if need_peer_id and "p2p" not in names:
        return f"invalid multiaddr {text!r}: must end with /p2p/<peer id>"
    if not need_peer_id and "p2p" in names:
        return f"invalid multiaddr {text!r}: a listen address takes no /p2p/ part"
    return None


def _multiaddr_list(*, need_peer_id: bool, count_max: int) -> Check:
    def check(values: tuple[str, ...]) -> str | None:
        if len(values) > count_max:
            return f"at most {count_max} entries"
        for index, text in enumerate(values):
            if not isinstance(text, str):
                return f"[{index}]: expected a string, got {type(text).__name__}"
            problem = multiaddr_problem(text, need_peer_id=need_peer_id)
            if problem:
                return f"[{index}]: {problem}"
        return None

    return check


def _key(doc: str, default: Any, check: Check | None = None) -> Any:
    """A schema key: `doc` is rendered as its comment in node.toml. Lists are tuples, so a
    frozen config is really immutable."""
    return field(default=default, metadata={"doc": doc, "check": check})


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    listen: tuple[str, ...] = _key(
        "multiaddrs to listen on (TCP); port 0 picks a free port",
        ("/ip4/127.0.0.1/tcp/4001",),
        _multiaddr_list(need_peer_id=False, count_max=16),
    )
    bootstrap: tuple[str, ...] = _key(
        "peers dialled at start and redialled when dropped, each /ip4/.../tcp/N/p2p/<id>",
        (),
        _multiaddr_list(need_peer_id=True, count_max=64),
    )
    peers_max: int = _key(
        "connection limit: inbound connections past it are closed", 64, _between(1, 4096)
    )
    known_peers_max: int = _key(
        "addresses kept in peers.json and redialled after restart", 256, _between(1, 65536)
    )
    dial_timeout_ms: int = _key("give up one dial attempt after this", 5000, _positive)
    dial_backoff_initial_ms: int = _key(
        "first retry delay after a failed dial; doubles each failure", 250, _positive
    )
    dial_backoff_max_ms: int = _key("cap of the retry delay", 30000, _positive)
    dial_attempts_max: int = _key(
        "failed dials before a learned (non-bootstrap) peer is forgotten", 8, _between(1, 1000)
    )
    ping_interval_ms: int = _key("how often each connected peer is pinged", 5000, _positive)
    peer_exchange: bool = _key("ask connected peers for the peers they know", True)
    peer_exchange_interval_ms: int = _key("how often peer exchange repeats", 15000, _positive)
    peer_exchange_addrs_max: int = _key(
        "addresses accepted from one peer-exchange answer", 64, _between(1, 1024)
    )
    frame_size_max: int = _key(
        "largest framed message (bytes) accepted from a peer; checked before reading",
        4 * 1024 * 1024,
        _between(1024, 64 * 1024 * 1024),
    )
    request_timeout_ms: int = _key("a request to a peer fails after this", 10000, _positive)
    inbound_requests_max: int = _key(
        "requests served at once for all peers together; more wait", 64, _between(1, 4096)
    )
    yamux_window_update_every_read: bool = _key(
        "send a yamux WINDOW_UPDATE after every read of a stream (py-libp2p's default) "
        "instead of once half the window is read (go-yamux)",
        False,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    request_size_max: int = _key(
        "longest request line (bytes) on node.sock; longer ones get an error",
        1024 * 1024,
        _between(1024, 256 * 1024 * 1024),
    )
    connections_max: int = _key("control connections served at once", 32, _between(1, 1024))


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = _key("debug, info, warning or error", "info", _one_of(LOG_LEVELS))
    file_size_max: int = _key(
        "bytes in logs/node.log before it rotates", 10 * 1024 * 1024, _between(4096, 2**40)
    )
    file_count_max: int = _key("rotated log files kept", 5, _between(1, 100))
    slow_step_ms: int = _key(
        "log when the event loop falls this far behind (wall ms), with the code that held "
        "it; 0 turns the check off",
        250, _between(0, 60_000),
    )
    count_task_steps: bool = _key(
        "also time every trio task step and count steps per task (diagnosis; costs CPU "
        "per step)", False,
    )


STORAGE_FRAME_SIZE_MIN = 1024 * 1024 + 4096
"""A block reply frame: a 1 MiB block, its CID and the message and wire envelopes."""

_DHT = DhtConfig()  # defaults and relations come from the core (dht/node_effects.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtSection:
    k: int = _key("bucket size and replication factor (libp2p Kademlia spec: 20)", _DHT.k)
    alpha: int = _key("lookup requests in flight (libp2p Kademlia spec: 3)", _DHT.alpha)
    request_timeout_ms: int = _key("one DHT request fails after this", _DHT.request_timeout_ms)
    lookup_deadline_ms: int = _key(
        "a lookup returns what it found by then, and says so", _DHT.lookup_deadline_ms
    )
    lookups_max: int = _key("lookups running at once; more are refused", _DHT.lookups_max)
    requests_pending_max: int = _key("DHT requests in flight", _DHT.requests_pending_max)
    get_value_quorum: int = _key(
        "valid records collected before GET_VALUE picks the newest", _DHT.get_value_quorum
    )
    maintenance_interval_ms: int = _key(
        "how often expiry, republish and refresh run", _DHT.maintenance_interval_ms
    )
    bucket_refresh_idle_ms: int = _key(
        "a bucket untouched this long is refreshed", _DHT.bucket_refresh_idle_ms
    )
    record_ttl_ms: int = _key("lifetime of a record we publish", _DHT.record_ttl_ms)
    record_ttl_max_ms: int = _key("longest lifetime accepted from others", _DHT.record_ttl_max_ms)
    record_republish_interval_ms: int = _key(
        "our records are republished this often", _DHT.record_republish_interval_ms
    )
    provider_ttl_ms: int = _key("lifetime of a provider record (24 h)", _DHT.provider_ttl_ms)
    provider_republish_interval_ms: int = _key(
        "our provider records are republished this often", _DHT.provider_republish_interval_ms
    )
    record_size_max: int = _key("largest record (bytes) stored or sent", _DHT.record_size_max)
    record_store_bytes_max: int = _key(
        "total bytes of records stored; the farthest from us is evicted past it",
        _DHT.record_store_bytes_max,
    )
    records_max: int = _key("records stored", _DHT.records_max)
    records_per_signer_max: int = _key(
        "records stored per signing key", _DHT.records_per_signer_max
    )
    providers_per_key_max: int = _key("providers kept per content key", _DHT.providers_per_key_max)
    provider_keys_per_peer_max: int = _key(
        "content keys one peer may provide (flood cap)", _DHT.provider_keys_per_peer_max
    )
    provider_records_max: int = _key("provider records stored", _DHT.provider_records_max)

    def core_config(self) -> DhtConfig:
        """The core's config; its own checks of how the limits relate run here."""
        return replace(_DHT, **{item.name: getattr(self, item.name) for item in fields(self)})


def _http_url_or_empty(value: str) -> str | None:
    if value == "" or value.startswith(("http://", "https://")):
        return None
    return "must be empty (off) or an http:// or https:// URL"


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSection:
    quota_bytes: int = _key(
        "bytes of blocks kept in <data_dir>/blocks; unpinned blocks are collected past it",
        10 * 1024**3,
        _between(1024 * 1024, 2**50),
    )
    fsync: bool = _key("fsync every block before it gets its name (crash safety)", True)
    replicate: bool = _key("accept replication offers: fetch and pin others' roots", False)
    replication_factor: int = _key(
        "holders wanted for each root this node pins; fewer makes it offer the root",
        3,
        _between(1, 64),
    )
    replication_interval_ms: int = _key(
        "how often pinned roots are checked against their provider count", 60000, _positive
    )
    replication_roots_max: int = _key(
        "pinned roots checked per replication round", 256, _between(1, 65536)
    )
    replication_queue_max: int = _key(
        "accepted replication offers waiting to be fetched; more are refused",
        16,
        _between(1, 1024),
    )
    upload_peer_bytes_per_s: int = _key(
        "blocks served to one peer per second (token bucket; the defaults do not bind on a "
        "LAN: lower them for a metered or shared link)",
        512 * 1024**2,
        _positive,
    )
    upload_total_bytes_per_s: int = _key(
        "blocks served to all peers together per second", 1024**3, _positive
    )
    upload_burst_bytes: int = _key(
        "burst of each upload bucket", 8 * 1024 * 1024, _between(1024 * 1024, 2**40)
    )
    download_peer_bytes_per_s: int = _key(
        "blocks fetched from one provider per second", 1024**3, _positive
    )
    download_total_bytes_per_s: int = _key(
        "blocks fetched from all providers together per second", 2 * 1024**3, _positive
    )
    download_burst_bytes: int = _key(
        "burst of each download bucket", 16 * 1024 * 1024, _between(1024 * 1024, 2**40)
    )
    in_flight_per_peer_max: int = _key(
        "blocks requested from one provider and not yet answered (<= 64)", 8, _between(1, 64)
    )
    providers_max: int = _key("providers one fetch pulls from at once", 32, _between(1, 1024))
    provider_lookups_max: int = _key(
        "DHT provider lookups one fetch makes before it gives up", 3, _between(1, 100)
    )
    request_timeout_ms: int = _key(
        "a block request unanswered this long is a strike against the provider",
        30000,
        _positive,
    )
    strikes_max: int = _key(
        "strikes before a provider is retired from a fetch", 3, _between(1, 100)
    )
    fetches_max: int = _key("fetches running at once; more are refused", 8, _between(1, 256))
    fetch_lanes: int = _key(
        "child processes that receive fetched blocks, each on its own core (0: in the node's "
        "process; -1: cores minus 3, at most 4, 0 below 4 cores); off with kubo_api",
        -1,
        _between(-1, 64),
    )
    operations_max: int = _key(
        "add/get progress entries kept for store_progress", 64, _between(1, 4096)
    )
    kubo_api: str = _key(
        "Kubo HTTP RPC base URL (e.g. http://127.0.0.1:5001) that also gets every block; "
        "empty: off",
        "",
        _http_url_or_empty,
    )
    kubo_timeout_ms: int = _key("one Kubo block/put call fails after this", 10000, _positive)


_PBFT = ReplicaConfig()  # defaults and relations come from the core


@dataclass(frozen=True, slots=True, kw_only=True)
class PbftSection:
    checkpoint_interval: int = _key(
        "K: blocks between checkpoints (stable checkpoint = garbage collection)",
        _PBFT.checkpoint_interval,
    )
    window_max: int = _key(
        "L: sequence numbers accepted above the stable checkpoint", _PBFT.window_max
    )
    batch_delay_ms: int = _key("the primary waits this long to fill a block", _PBFT.batch_delay_ms)
    forward_delay_ms: int = _key(
        "clients' transactions are gathered this long into one FORWARD to the other replicas",
        _PBFT.forward_delay_ms,
    )
    view_change_timeout_ms: int = _key(
        "no progress this long with work pending: suspect the primary", _PBFT.view_change_timeout_ms
    )
    view_change_timeout_max_ms: int = _key(
        "cap of the doubling view-change timeout", _PBFT.view_change_timeout_max_ms
    )
    retransmit_interval_ms: int = _key(
        "unfinished slots' messages are resent this often", _PBFT.retransmit_interval_ms
    )
    state_transfer_timeout_ms: int = _key(
        "a state request unanswered this long goes to another replica",
        _PBFT.state_transfer_timeout_ms,
    )
    mempool_max: int = _key("transactions waiting in the mempool", _PBFT.mempool_max)
    mempool_per_sender_max: int = _key(
        "transactions waiting per sender", _PBFT.mempool_per_sender_max
    )
    clock_skew_max_ms: int = _key(
        "a proposed block's timestamp may be this far ahead of our clock", _PBFT.clock_skew_max_ms
    )

    def core_config(self) -> ReplicaConfig:
        """The replica's config; its own checks of how the limits relate run here."""
        return replace(_PBFT, **{item.name: getattr(self, item.name) for item in fields(self)})


JOB_KINDS = ("inference", "distill")
JOB_DEVICES = ("auto", "cpu", "cuda")
JOB_SANDBOX_MODES = ("auto", "required", "off")


def _kinds(values: tuple[str, ...]) -> str | None:
    for value in values:
        if value not in JOB_KINDS:
            return f"unknown job kind {value!r} (known: {', '.join(JOB_KINDS)})"
    return None


def _price_hints(values: tuple[str, ...]) -> str | None:
    if len(values) > 16:
        return "at most 16 entries"
    for index, text in enumerate(values):
        kind, _, units = str(text).partition("=")
        if not kind or len(kind) > 64 or not units.isdigit() or len(units) > 40:
            return f"[{index}]: expected 'JOB_KIND=BASE_UNITS', e.g. 'inference=1000000000000000'"
    return None


def _job_kinds(values: tuple[str, ...]) -> str | None:
    if len(values) > 16:
        return "at most 16 entries"
    if any(not isinstance(kind, str) or not 0 < len(kind) <= 64 for kind in values):
        return "each job kind is a string of 1 to 64 characters"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsSection:
    max_concurrent: int = _key(
        "job worker processes running at once; more jobs wait in the queue", 1, _between(1, 64)
    )
    queue_max: int = _key("jobs waiting for a worker; more are refused", 16, _between(1, 4096))
    cpu_seconds: int = _key(
        "CPU seconds one job may use (RLIMIT_CPU, all its threads together)",
        600,
        _between(1, 7 * 24 * 3600),
    )
    memory_mb: int = _key(
        "resident memory (MiB) one job's worker may use; torch alone takes ~300",
        2048,
        _between(512, 2**20),
    )
    wall_seconds: int = _key(
        "wall-clock seconds from spawn to result; the worker is killed past it",
        900,
        _between(1, 7 * 24 * 3600),
    )
    threads: int = _key(
        "torch threads per job; results are bitwise reproducible for a fixed count",
        1,
        _between(1, 256),
    )
    kinds: tuple[str, ...] = _key("job kinds this node runs", JOB_KINDS, _kinds)
    device: str = _key(
        "auto (the GPU when torch sees one), cpu or cuda", "auto", _one_of(JOB_DEVICES)
    )
    sandbox: str = _key(
        "worker isolation by Linux namespaces: auto (when the kernel allows, else a "
        "warning), required (no jobs without it) or off",
        "auto",
        _one_of(JOB_SANDBOX_MODES),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrySection:
    announce_interval_ms: int = _key(
        "capabilities are announced this often (and our model announcements renewed)",
        30_000,
        _between(100, 86_400_000),
    )
    capability_ttl_ms: int = _key(
        "a capability announcement expires after this: a node that stops announcing "
        "leaves the view",
        90_000,
        _between(1000, 86_400_000),
    )
    model_ttl_ms: int = _key(
        "lifetime of our model announcements; renewed at half of it while we run",
        24 * 3600 * 1000,
        _between(1000, 7 * 86_400_000),
    )
    offer_ttl_ms: int = _key(
        "lifetime of a job offer published without a deadline", 3600 * 1000, _positive
    )
    ttl_max_ms: int = _key(
        "longest lifetime accepted from others (an expiry further ahead is refused)",
        48 * 3600 * 1000,
        _between(1000, 30 * 86_400_000),
    )
    clock_skew_max_ms: int = _key(
        "a message may be issued this far ahead of our clock", 30_000, _between(0, 3_600_000)
    )
    message_size_max: int = _key(
        "largest registry message (bytes) accepted, checked before decoding",
        16 * 1024,
        _between(1024, 1024 * 1024),
    )
    entries_max: int = _key(
        "entries kept in the view; new ones are refused past it", 100_000, _between(16, 10**7)
    )
    entries_per_signer_max: int = _key(
        "entries kept per signing key (flood cap)", 256, _between(2, 65_536)
    )
    ingest_queue_max: int = _key(
        "accepted entries waiting for the SQLite writer; more are refused until it catches up",
        4096,
        _between(16, 1_000_000),
    )
    heartbeat_interval_ms: int = _key(
        "GossipSub heartbeat (mesh upkeep, IHAVE gossip); py-libp2p's own default is 120 s",
        1000,
        _between(100, 60_000),
    )
    mesh_degree: int = _key("GossipSub D: mesh peers per topic (spec: 6)", 6, _between(1, 64))
    mesh_degree_low: int = _key("GossipSub D_low: graft below it (spec: 4)", 4, _between(1, 64))
    mesh_degree_high: int = _key(
        "GossipSub D_high: prune above it (spec: 12)", 12, _between(1, 128)
    )
    flood_publish: bool = _key(
        "send our own messages to every subscribed peer above the publish threshold, not "
        "only the mesh (GossipSub v1.1 flood publishing, on by default in go-libp2p)",
        True,
    )
    rate_limit_per_s: int = _key(
        "messages per second per topic accepted for relay from one peer (GossipSub spam "
        "protection; 0: off); it bounds the whole network's rate seen through one peer",
        100,
        _between(0, 1_000_000),
    )
    eclipse_protection: bool = _key(
        "keep peers from several IP addresses in each mesh (off on a loopback devnet)", True
    )
    eclipse_distinct_ips_min: int = _key(
        "distinct IP addresses eclipse protection wants in a mesh", 3, _between(1, 64)
    )
    rpc_size_max: int = _key(
        "largest pubsub RPC frame (bytes) read from a peer", 1024 * 1024, _between(4096, 2**26)
    )
    sync_interval_ms: int = _key(
        "anti-entropy: pull what we miss from one random peer this often", 60_000, _positive
    )
    sync_page_signers_max: int = _key(
        "signers per page of a /prsm/registry-sync/1.0.0 summary", 512, _between(1, 4096)
    )
    sync_page_bytes_max: int = _key(
        "bytes of entries per sync answer (below network.frame_size_max)",
        512 * 1024,
        _between(16 * 1024, 32 * 1024 * 1024),
    )
    gpu_probe: bool = _key(
        "probe GPUs once at start in a subprocess that imports torch (about 1 s of CPU)", True
    )
    job_kinds: tuple[str, ...] = _key(
        "job kinds announced when torch is installed (none without torch)",
        JOB_KINDS,
        _job_kinds,
    )
    price_hints: tuple[str, ...] = _key(
        "price hints announced, 'JOB_KIND=BASE_UNITS' (1 FTNS = 10^18 units)", (), _price_hints
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dht: DhtSection = field(default_factory=DhtSection)
    pbft: PbftSection = field(default_factory=PbftSection)
    storage: StorageSection = field(default_factory=StorageSection)
    jobs: JobsSection = field(default_factory=JobsSection)
    registry: RegistrySection = field(default_factory=RegistrySection)


SECTION_DOCS = {
    "network": "libp2p host, peers and the framed request/response layer",
    "control": "the JSON-RPC control socket <data_dir>/node.sock",
    "log": "structured logs: JSON lines in <data_dir>/logs/, readable lines on stderr",
    "dht": "Kademlia DHT /prsm/kad/1.0.0 (times in ms, sizes in bytes)",
    "pbft": "PBFT replica of the FTNS ledger /prsm/pbft/3.0.0 (chain rules: genesis.json)",
    "storage": "content-addressed block store and /prsm/blocks/1.0.0 (times in ms, sizes in bytes)",
    "jobs": "inference and distillation jobs in sandboxed torch worker processes",
    "registry": "gossiped registry: GossipSub topics and /prsm/registry-sync/1.0.0 (ms, bytes)",
}


def _type_problem(value: Any, default: Any) -> str | None:
    expected = (list, tuple) if isinstance(default, tuple) else type(default)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
        return f"expected {_type_name(default)}, got {_type_name(value)} {value!r}"
    return None


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", list: "a list", tuple: "a list"}
    return names.get(type(value), type(value).__name__)


def _build_section(cls: type, raw: Mapping[str, Any], file: Path | str, name: str) -> Any:
    known = {item.name: item for item in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(file, f"{name}.{key}", f"unknown key (known: {', '.join(known)})")
    values = {}
    defaults = cls()
    for key, value in raw.items():
        problem = _type_problem(value, getattr(defaults, key)) or _run_check(known[key], value)
        if problem:
            raise ConfigError(file, f"{name}.{key}", problem)
        values[key] = tuple(value) if isinstance(value, list) else value
    return replace(defaults, **values)


def _run_check(item: Any, value: Any) -> str | None:
    check = item.metadata.get("check")
    return check(value) if check else None


def _check_relations(config: NodeConfig, file: Path | str) -> None:
    network = config.network
    if network.dial_backoff_initial_ms > network.dial_backoff_max_ms:
        raise ConfigError(
            file, "network.dial_backoff_initial_ms", "must not exceed network.dial_backoff_max_ms"
        )
    if len(network.bootstrap) > network.known_peers_max:
        raise ConfigError(file, "network.bootstrap", "more entries than network.known_peers_max")
    if network.frame_size_max < STORAGE_FRAME_SIZE_MIN:
        raise ConfigError(
            file,
            "network.frame_size_max",
            f"must be at least {STORAGE_FRAME_SIZE_MIN} to carry one 1 MiB block",
        )
    _check_registry(config, file)
    for name in ("dht", "pbft"):
        try:
            getattr(config, name).core_config()
        except ValueError as error:
            raise ConfigError(file, name, str(error).removeprefix(f"{name} config: ")) from None


def _check_registry(config: NodeConfig, file: Path | str) -> None:
    registry = config.registry
    if not registry.mesh_degree_low <= registry.mesh_degree <= registry.mesh_degree_high:
        raise ConfigError(
            file,
            "registry.mesh_degree",
            "must satisfy mesh_degree_low <= mesh_degree <= mesh_degree_high",
        )
    if registry.sync_page_bytes_max + 64 * 1024 > config.network.frame_size_max:
        raise ConfigError(
            file,
            "registry.sync_page_bytes_max",
            "must be at least 64 KiB below network.frame_size_max (one answer is one frame)",
        )
    if registry.message_size_max > registry.sync_page_bytes_max:
        raise ConfigError(
            file, "registry.message_size_max", "must not exceed registry.sync_page_bytes_max"
        )
    if registry.message_size_max + 1024 > registry.rpc_size_max:
        raise ConfigError(
            file, "registry.message_size_max", "must fit in registry.rpc_size_max with 1 KiB spare"
        )
    if registry.capability_ttl_ms <= registry.announce_interval_ms:
        raise ConfigError(
            file,
            "registry.capability_ttl_ms",
            "must exceed registry.announce_interval_ms, or live nodes expire between announcements",
        )
    for name in ("capability_ttl_ms", "model_ttl_ms"):
        if getattr(registry, name) > registry.ttl_max_ms:
            raise ConfigError(file, f"registry.{name}", "must not exceed registry.ttl_max_ms")


def config_from_mapping(raw: Mapping[str, Any], file: Path | str) -> NodeConfig:
    """Build and check a config from parsed TOML; raises ConfigError naming the key."""
    sections = {item.name: item for item in fields(NodeConfig)}
    built = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(file, name, f"unknown section (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise ConfigError(file, name, f"expected a table [{name}], got {_type_name(value)}")
        section_type = type(getattr(NodeConfig(), name))
        built[name] = _build_section(section_type, value, file, name)
    config = NodeConfig(**built)
    _check_relations(config, file)
    return config


def load_config(path: Path) -> NodeConfig:
    """Read and check `path`; a missing file means all defaults."""
    if not path.exists():
        return NodeConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, None, f"not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, None, f"cannot read: {error}") from None
    return config_from_mapping(raw, path)


def with_overrides(config: NodeConfig, overrides: Mapping[str, Any]) -> NodeConfig:
    """Apply command-line flags given as {"section.key": value}, checked like the file."""
    raw: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    merged = {
        item.name: {
            **_section_values(getattr(config, item.name)),
            **raw.get(item.name, {}),
        }
        for item in fields(NodeConfig)
    }
    return config_from_mapping(merged, "command line")


def _section_values(section: Any) -> dict[str, Any]:
    return {item.name: getattr(section, item.name) for item in fields(section)}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of printable text is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render_toml(config: NodeConfig | None = None) -> str:
    """The node.toml text for `config` (defaults if None), every key with its doc and default."""
    config = config or NodeConfig()
    defaults = NodeConfig()
    lines = [
        "# PRSM node configuration. Every key is shown with its default; delete a line to",
        "# go back to the default. Flags (--listen, --bootstrap, --log-level) override it.",
    ]
    for section in fields(NodeConfig):
        lines += ["", f"# {SECTION_DOCS[section.name]}", f"[{section.name}]"]
        current, default = getattr(config, section.name), getattr(defaults, section.name)
        for item in fields(current):
            lines.append(
                f"# {item.metadata['doc']} (default: {_toml_value(getattr(default, item.name))})"
            )
            lines.append(f"{item.name} = {_toml_value(getattr(current, item.name))}")
    return "\n".join(lines) + "\n"
