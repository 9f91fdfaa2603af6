"""`prsm-node`: the daemon's entry point and the client of its control socket.

Rules: client commands import neither trio nor libp2p (they must answer fast); every
operator mistake is a UserError printed as one line on stderr with its exit code (2 for
config errors), never a traceback; `--json` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from prsm_node import __version__
from prsm_node.cli_jobs import job_app, model_app, worker_app
from prsm_node.cli_ledger import ledger_app, tx_app, wallet_app
from prsm_node.cli_registry import models_app, nodes, offers
from prsm_node.cli_store import store_app
from prsm_node.errors import UserError

app = typer.Typer(
    name="prsm-node",
    help="PRSM node: a peer-to-peer daemon for sharing AI models and compute.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
devnet_app = typer.Typer(help="Run a local network of nodes on 127.0.0.1.", no_args_is_help=True)
app.add_typer(devnet_app, name="devnet")
dht_app = typer.Typer(help="Query and publish in the Kademlia DHT.", no_args_is_help=True)
app.add_typer(dht_app, name="dht")
app.add_typer(store_app, name="store")
app.add_typer(wallet_app, name="wallet")
app.add_typer(tx_app, name="tx")
app.add_typer(ledger_app, name="ledger")
app.add_typer(model_app, name="model")
app.add_typer(worker_app, name="worker")
app.add_typer(job_app, name="job")
app.add_typer(models_app, name="models")
app.command("nodes")(nodes)
app.command("offers")(offers)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data dir (default: $PRSM_HOME, else ~/.prsm).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ListenOption = Annotated[
    list[str] | None, typer.Option("--listen", help="Listen multiaddr (repeatable).")
]
BootstrapOption = Annotated[
    list[str] | None,
    typer.Option("--bootstrap", help="Bootstrap peer multiaddr with /p2p/ (repeatable)."),
]


def _data_dir(option: Path | None) -> Any:
    from prsm_node.datadir import DataDir, default_data_dir

    return DataDir((option or default_data_dir()).expanduser().absolute())


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _overrides(
    listen: list[str] | None, bootstrap: list[str] | None, log_level: str | None
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if listen:
        overrides["network.listen"] = listen
    if bootstrap:
        overrides["network.bootstrap"] = bootstrap
    if log_level:
        overrides["log.level"] = log_level.lower()
    return overrides


@app.command()
def init(
    data_dir: DataDirOption = None,
    listen: ListenOption = None,
    bootstrap: BootstrapOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create the data dir, the node key (mode 0600) and node.toml."""
    from prsm_node.config import NodeConfig, with_overrides
    from prsm_node.identity import peer_id_of, read_seed

    directory = _data_dir(data_dir)
    config = with_overrides(NodeConfig(), _overrides(listen, bootstrap, None))
    created = directory.initialise(config)
    peer_id = peer_id_of(read_seed(directory.key_file))
    result = {"data_dir": str(directory.root), "peer_id": peer_id, "created": created}
    if json_output:
        typer.echo(json.dumps(result))
        return
    state = "initialised" if created else "already initialised"
    typer.echo(f"{state}: {directory.root}\npeer id: {peer_id}\nconfig:  {directory.config_file}")


@app.command()
def run(
    data_dir: DataDirOption = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Config file (default: <data dir>/node.toml).")
    ] = None,
    listen: ListenOption = None,
    bootstrap: BootstrapOption = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = None,
) -> None:
    """Run the node in the foreground until SIGINT or SIGTERM (initialises the data dir first)."""
    import trio

    from prsm_node.config import load_config, with_overrides
    from prsm_node.daemon import run_node
    from prsm_node.logs import configure_logging

    directory = _data_dir(data_dir)
    if not directory.is_initialised():
        directory.initialise()
    config_file = config or directory.config_file
    if config is not None and not config.exists():
        raise UserError(f"config file {config} not found")
    node_config = with_overrides(load_config(config_file), _overrides(listen, bootstrap, log_level))
    configure_logging(directory.log_dir, node_config.log)
    trio.run(run_node, directory, node_config)


def _client(data_dir: Path | None) -> Any:
    from prsm_node.control import ControlClient

    return ControlClient(_data_dir(data_dir).socket_path)


def _call(data_dir: Path | None, method: str, params: dict[str, Any] | None = None) -> Any:
    with _client(data_dir) as client:
        return client.call(method, params)


@app.command()
def status(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Show the running node's identity, addresses and peer count."""
    info = _call(data_dir, "node_info")
    info["peers"] = len(_call(data_dir, "peers_list")["peers"])
    if json_output:
        typer.echo(json.dumps(info))
        return
    rows = [
        ("peer id", info["peer_id"]),
        ("version", info["version"]),
        ("pid", str(info["pid"])),
        ("uptime", f"{info['uptime_s']:.1f} s"),
        ("data dir", info["data_dir"]),
        ("peers", str(info["peers"])),
    ] + [("listening", address) for address in info["listen_addrs"]]
    for label, value in rows:
        typer.echo(f"{label:<10} {value}")


@app.command()
def peers(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """List connected peers with direction and ping latency."""
    result = _call(data_dir, "peers_list")
    if json_output:
        typer.echo(json.dumps(result))
        return
    if not result["peers"]:
        typer.echo("no peers connected")
        return
    typer.echo(f"{'PEER ID':<54} {'DIRECTION':<9} {'LATENCY':>9}  ADDRESS")
    for peer in result["peers"]:
        latency = "-" if peer["latency_ms"] is None else f"{peer['latency_ms']:.2f} ms"
        address = peer["addrs"][0] if peer["addrs"] else "-"
        typer.echo(f"{peer['peer_id']:<54} {peer['direction']:<9} {latency:>9}  {address}")


@app.command()
def connect(
    multiaddr: Annotated[str, typer.Argument(help="/ip4/HOST/tcp/PORT/p2p/PEER_ID")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Connect the running node to a peer now."""
    result = _call(data_dir, "peers_connect", {"multiaddr": multiaddr})
    typer.echo(json.dumps(result) if json_output else f"connected to {result['peer_id']}")


@app.command()
def stop(
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: Annotated[float, typer.Option("--wait", help="Seconds to wait for the exit.")] = 30.0,
) -> None:
    """Ask the running node to shut down and wait until it has."""
    directory = _data_dir(data_dir)
    info = _call(data_dir, "node_info")
    _call(data_dir, "node_shutdown")
    deadline = time.monotonic() + wait_s
    while directory.lock_file.exists() or directory.socket_path.exists():
        if time.monotonic() > deadline:
            _fail(f"node (pid {info['pid']}) did not stop within {wait_s:g} s")
        time.sleep(0.05)
    result = {"stopped": True, "pid": info["pid"]}
    typer.echo(json.dumps(result) if json_output else f"stopped node (pid {info['pid']})")


@app.command()
def rpc(
    method: Annotated[str, typer.Argument(help="Control method, e.g. node_info.")],
    params: Annotated[str | None, typer.Argument(help="Params as JSON (object or array).")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Send one raw JSON-RPC request and print the whole response."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        try:
            request["params"] = json.loads(params)
        except json.JSONDecodeError as error:
            _fail(f"params are not valid JSON: {error}", 2)
    with _client(data_dir) as client:
        response = client.call_raw(request)
    typer.echo(json.dumps(response, indent=2))
    if isinstance(response, dict) and "error" in response:
        raise typer.Exit(1)


def _print_lookup(result: dict[str, Any]) -> None:
    state = "completed" if result["completed"] else "deadline reached: partial result"
    typer.echo(
        f"lookup: {state}, {result['rounds']} rounds, {result['peers_contacted']} peers "
        f"contacted, {result['duration_ms']} ms"
    )


@dht_app.command("find-peer")
def dht_find_peer(
    peer_id: str, data_dir: DataDirOption = None, json_output: JsonOption = False
) -> None:
    """Find a peer's addresses through the DHT."""
    result = _call(data_dir, "dht_find_peer", {"peer_id": peer_id})
    if json_output:
        typer.echo(json.dumps(result))
        return
    typer.echo("\n".join(result["addrs"]) if result["found"] else f"peer {peer_id} not found")
    _print_lookup(result)
    if not result["found"]:
        raise typer.Exit(1)


@dht_app.command("put")
def dht_put(
    key: Annotated[str, typer.Argument(help="NAME (in our namespace) or a full /registry/ key")],
    value: Annotated[str, typer.Argument(help="A JSON object, or any text")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Publish a signed record, replicated to the k closest peers and republished."""
    result = _call(data_dir, "dht_put", {"key": key, "value": value})
    if json_output:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"stored {result['key']} (seq {result['seq']}) at {result['peers_sent']} peers")
    _print_lookup(result)


@dht_app.command("get")
def dht_get(key: str, data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Fetch the newest valid record for KEY."""
    result = _call(data_dir, "dht_get", {"key": key})
    if json_output:
        typer.echo(json.dumps(result))
        return
    if not result["found"]:
        typer.echo(f"no record for {result['key']}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(result["value"]))
    typer.echo(f"seq {result['seq']}, signed by {result['signer']}")
    _print_lookup(result)


@dht_app.command("provide")
def dht_provide(cid: str, data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Announce that this node provides CID."""
    result = _call(data_dir, "dht_provide", {"cid": cid})
    if json_output:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"provider record for {cid} sent to {result['peers_sent']} peers")


@dht_app.command("providers")
def dht_providers(
    cid: str, data_dir: DataDirOption = None, json_output: JsonOption = False
) -> None:
    """List the peers that provide CID."""
    result = _call(data_dir, "dht_providers", {"cid": cid})
    if json_output:
        typer.echo(json.dumps(result))
        return
    for provider in result["providers"]:
        typer.echo(f"{provider['peer_id']}  {' '.join(provider['addrs'])}")
    if not result["providers"]:
        typer.echo(f"no providers found for {cid}")
    _print_lookup(result)


@dht_app.command("table")
def dht_table(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Show the routing table's bucket occupancy."""
    result = _call(data_dir, "dht_table")
    if json_output:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['peers_total']} peers in {len(result['buckets'])} buckets")
    typer.echo(f"{'BUCKET':>6}  PEERS")
    for bucket in result["buckets"]:
        typer.echo(f"{bucket['index']:>6}  {'#' * bucket['peers']} {bucket['peers']}")
    typer.echo(
        f"records {result['records_stored']}, provider keys {result['provider_keys']}, "
        f"hostile inputs {result['counters']['hostile_inputs']}"
    )


@devnet_app.command("init")
def devnet_init_command(
    nodes: Annotated[int, typer.Option("--nodes", help="How many nodes.")] = 3,
    directory: Annotated[Path, typer.Option("--dir", help="Where the data dirs go.")] = Path(
        "devnet"
    ),
    validators: Annotated[
        int | None, typer.Option("--validators", help="Validators (default: every node).")
    ] = None,
) -> None:
    """Write N data dirs on 127.0.0.1 with free ports; node1.. bootstrap from node0; one
    shared genesis in which the first --validators nodes validate and the rest follow."""
    from prsm_node.devnet import devnet_init

    created = devnet_init(directory, nodes, validators=validators)
    for node in created:
        typer.echo(f"{node.name}  {node.peer_id}  {node.listen}  {node.data_dir}")
    typer.echo(f"devnet of {len(created)} nodes in {directory}")
    typer.echo(f"start it with: prsm-node devnet up --dir {directory}")


@devnet_app.command("up")
def devnet_up_command(
    directory: Annotated[Path, typer.Option("--dir", help="A dir made by `devnet init`.")] = Path(
        "devnet"
    ),
) -> None:
    """Start every node of the devnet; Ctrl-C stops them all."""
    from prsm_node.devnet import Devnet, load_devnet

    with Devnet(load_devnet(directory)) as devnet:
        devnet.start_all()
        for index, node in enumerate(devnet.nodes):
            devnet.wait_ready(index)
            typer.echo(f"{node.name}  {node.peer_id}  {node.socket_path}")
        typer.echo(f"{len(devnet.nodes)} nodes running; Ctrl-C stops them")
        _wait_for_interrupt(devnet)
        typer.echo("stopping...")


def _wait_for_interrupt(devnet: Any) -> None:
    stopping = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.append(True))
    while not stopping:
        for index, code in devnet.exited().items():
            typer.echo(f"warning: {devnet.nodes[index].name} exited with code {code}", err=True)
            devnet.stop(index)
        time.sleep(0.2)


def main() -> None:
    """Console entry point: operator errors become one line and an exit code."""
    from prsm_node.control import ControlClientError, RpcCallError

    try:
        app()
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except RpcCallError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    except ControlClientError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)


__all__ = ["__version__", "app", "main"]
