"""Benchmark: peer-to-peer block exchange between real `prsm-node run` processes on 127.0.0.1.

Run: ``python benchmarks/bench_storage_network.py --out bench-storage-network.json``
(100 MB = 100 * 10**6 bytes by default, ``--size-mb N`` to change). In one run, one after
the other on the same machine, it measures:
- sha256 (hashlib, one core), local ``add`` into a block store and ``get`` back, fsync on
  as the node's default (``bench_storage.local_figures``), on the same file;
- the raw throughput of ONE py-libp2p stream between two processes on 127.0.0.1, each with
  a host from ``prsm_node.net.host.build_host`` (TCP + Noise + Yamux, as the node): the
  sender writes the file's size in 1 MiB writes, the receiver reads it all and answers 8
  bytes; the figure is first write to answer;
- a devnet of 4 nodes with default settings (fsync on): ``store add`` through the CLI on
  node0 (a fresh interpreter, as a user runs it), then node1 fetching the file from 1
  provider (node0), node2 from 2, node3 from 3 at once. Each fetch's figure is the node's
  own fetch duration (``duration_ms``: provider lookup, transfer, verification and storage,
  not writing the output file).
``--no-fsync`` sets ``storage.fsync = false`` on the nodes (the local figures are
measured both ways in every run); ``--lanes N`` sets ``storage.fetch_lanes`` (the node's
default, -1, runs lanes from 4 cores on). A node's CPU figure includes its lanes.
``--profile`` runs node3 under cProfile (its main thread: the event loop; worker threads and
lanes are not seen) and prints its top functions; the profile slows node3, so do not record
the figures of a profiled run. Asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import cpu_seconds_with_children
from benchmarks.bench_storage import local_figures
from prsm_node.devnet import Devnet, devnet_init, wait_for
from prsm_node.storage_lanes import lanes_wanted

MB = 1_000_000
MIB = 1024 * 1024
NODES = 4
RAW_PROTOCOL = "/prsm/bench-raw-stream/1.0.0"
RAW_DEADLINE_S = 300


# -- one raw py-libp2p stream: two processes running this file with --raw-role ---------


async def _read_exactly(stream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = await stream.read(count - len(data))
        if not chunk:
            raise EOFError(f"stream closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def _raw_host():
    import trio
    from nacl.signing import SigningKey

    from prsm_node.config import NetworkConfig
    from prsm_node.net.host import build_host

    events, _ = trio.open_memory_channel(1024)  # a handful of connection events at most
    network = replace(NetworkConfig(), listen=("/ip4/127.0.0.1/tcp/0",))
    return build_host(bytes(SigningKey.generate()), network, events)


async def _raw_receive() -> None:
    import trio
    from libp2p.custom_types import TProtocol
    from multiaddr import Multiaddr

    host = _raw_host()
    done = trio.Event()

    async def serve(stream) -> None:
        total = int.from_bytes(await _read_exactly(stream, 8), "big")
        cpu_start = time.process_time()
        received = 0
        while received < total:
            chunk = await stream.read(min(total - received, MIB))
            if not chunk:
                break
            received += len(chunk)
        await stream.write(received.to_bytes(8, "big"))
        cpu["receiver_cpu_s"] = time.process_time() - cpu_start
        await stream.close()
        done.set()

    cpu: dict[str, float] = {}

    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        host.set_stream_handler(TProtocol(RAW_PROTOCOL), serve)
        print(f"{host.get_addrs()[0]}/p2p/{host.get_id()}", flush=True)
        with trio.fail_after(RAW_DEADLINE_S):
            await done.wait()
        await trio.sleep(0.2)  # let the answer leave before the host closes
    print(json.dumps(cpu), flush=True)


async def _raw_send(address: str, size: int) -> None:
    import trio
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from multiaddr import Multiaddr

    from prsm_node.net.host import dial

    host = _raw_host()
    payload = os.urandom(MIB)
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(RAW_DEADLINE_S):
            peer = await dial(host, address)
            stream = await host.new_stream(ID.from_base58(peer), [TProtocol(RAW_PROTOCOL)])
            start = time.perf_counter()
            cpu_start = time.process_time()
            await stream.write(size.to_bytes(8, "big"))
            sent = 0
            while sent < size:
                piece = payload if size - sent >= MIB else payload[: size - sent]
                await stream.write(piece)
                sent += len(piece)
            received = int.from_bytes(await _read_exactly(stream, 8), "big")
            seconds = time.perf_counter() - start
            cpu_s = time.process_time() - cpu_start
    print(json.dumps({"bytes": received, "seconds": seconds, "sender_cpu_s": cpu_s}), flush=True)


def raw_stream_mb_per_s(size: int) -> tuple[float, float, dict[str, float]]:
    """(MB/s, seconds, CPU seconds of sender and receiver during the transfer) of one
    py-libp2p stream between two fresh processes."""
    script = str(Path(__file__).resolve())
    receiver = subprocess.Popen(
        [sys.executable, script, "--raw-role", "receive"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        address = receiver.stdout.readline().strip()
        sender = subprocess.run(
            [
                sys.executable,
                script,
                "--raw-role",
                "send",
                "--raw-address",
                address,
                "--size-mb",
                str(size / MB),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=RAW_DEADLINE_S + 30,
        )
        receiver_cpu = json.loads(receiver.stdout.readline())
        receiver.wait(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        if receiver.stdout is not None:
            receiver.stdout.close()
    figures = json.loads(sender.stdout.strip().splitlines()[-1])
    if figures["bytes"] != size:
        raise RuntimeError(f"raw stream delivered {figures['bytes']} of {size} bytes")
    cpu = {"sender_cpu_s": round(figures["sender_cpu_s"], 2),
           "receiver_cpu_s": round(receiver_cpu["receiver_cpu_s"], 2)}
    return size / figures["seconds"] / MB, figures["seconds"], cpu


# -- the devnet ---------------------------------------------------------------------------


def cli_add(devnet: Devnet, path: Path) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prsm_node",
            "store",
            "add",
            str(path),
            "--json",
            "--data-dir",
            str(devnet.nodes[0].data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)["cid"], time.perf_counter() - start


def fetch(devnet: Devnet, index: int, cid: str) -> dict:
    with devnet.client(index, timeout_s=600) as client:
        return client.call("store_get", {"cid": cid})


def nodes_cpu_seconds(devnet: Devnet) -> list[float]:
    """CPU seconds used so far by each node process and its transfer lanes."""
    return [cpu_seconds_with_children(devnet.pid(index)) for index in range(NODES)]


def set_storage(devnet: Devnet, **storage: object) -> None:
    from prsm_node.config import load_config, render_toml
    from prsm_node.datadir import DataDir

    for node in devnet.nodes:
        path = DataDir(node.data_dir).config_file
        config = load_config(path)
        path.write_text(render_toml(replace(config, storage=replace(config.storage, **storage))))


def wait_for_lanes(devnet: Devnet, configured: int) -> None:
    """Every node's transfer lanes running: the figures are a running node's, not its
    start's (a lane's interpreter starts with the node, in the background)."""
    count = lanes_wanted(configured, os.cpu_count())
    for index in range(NODES):
        wait_for(
            lambda i=index: devnet.call(i, "store_stat")["counters"].get("lanes_running", 0)
            == count,
            120,
            f"node{index}'s {count} transfer lanes",
        )


def write_source(path: Path, size: int) -> None:
    with open(path, "wb") as stream:
        for offset in range(0, size, MIB):
            stream.write(os.urandom(min(MIB, size - offset)))


def start_devnet(devnet: Devnet, *, profile: Path | None) -> None:
    for index in range(NODES):
        if profile is not None and index == NODES - 1:
            devnet.start_profiled(index, profile)
        else:
            devnet.start(index)
    for index in range(NODES):
        devnet.wait_ready(index)
    for index in range(NODES):
        wait_for(
            lambda i=index: devnet.call(i, "dht_table")["peers_total"] >= NODES - 1,
            60,
            f"node{index} DHT table",
        )


class ProfiledDevnet(Devnet):
    """A devnet whose node can run under ``python -m cProfile`` (written at a clean stop)."""

    def start_profiled(self, index: int, profile: Path):
        saved = self._extra_args
        node = self.nodes[index]
        output = open(node.data_dir / "logs" / "process.log", "ab")  # noqa: SIM115
        command = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(profile),
            "-m",
            "prsm_node",
            "run",
            "--data-dir",
            str(node.data_dir),
        ]
        process = subprocess.Popen(
            command + saved,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self._processes[index] = process
        self._outputs[index] = output
        return process


def print_profile(profile: Path, top: int = 25) -> str:
    text = io.StringIO()
    stats = pstats.Stats(str(profile), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--out")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-fsync", action="store_true", help="nodes with storage.fsync off")
    parser.add_argument("--lanes", type=int, help="storage.fetch_lanes of the nodes")
    parser.add_argument("--raw-role", choices=("receive", "send"), help=argparse.SUPPRESS)
    parser.add_argument("--raw-address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = int(args.size_mb * MB)
    if args.raw_role is not None:
        import trio

        if args.raw_role == "receive":
            trio.run(_raw_receive)
        else:
            trio.run(_raw_send, args.raw_address, size)
        return
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.platform()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "size_bytes": size,
        "nodes_fsync": not args.no_fsync,
        "nodes_fetch_lanes": args.lanes if args.lanes is not None else "default",
        "fetch_lanes_each": lanes_wanted(-1 if args.lanes is None else args.lanes,
                                         os.cpu_count()),
    }
    with tempfile.TemporaryDirectory(prefix="bench-net-", dir="/tmp") as scratch:
        directory = Path(scratch)
        source = directory / "model.bin"
        write_source(source, size)
        # fsync off first: the fsync-on pass leaves no dirty pages behind to write back
        print("local, fsync off (storage.fsync = false):")
        no_fsync = local_figures(source, directory / "nofsync", fsync=False)
        results["local_no_fsync_mb_per_s"] = no_fsync
        print(f"local, fsync on, the node's default ({size / MB:g} MB):")
        local = local_figures(source, directory, fsync=True)
        results["local_mb_per_s"] = local
        results["sha256_mb_per_s"] = local["sha256 (hashlib, 1 MiB)"]
        results["local_add_mb_per_s"] = local["add into block store"]
        results["local_get_mb_per_s"] = local["get: read file back"]
        raw, raw_s, raw_cpu = raw_stream_mb_per_s(size)
        results["raw_stream_mb_per_s"] = round(raw, 1)
        results["raw_stream_cpu_s"] = raw_cpu
        print(f"one py-libp2p stream (2 processes) {raw:>8.1f} MB/s ({raw_s:.2f} s, CPU s"
              f" {raw_cpu})")
        profile = directory / "node3.prof" if args.profile else None
        with ProfiledDevnet(devnet_init(directory / "net", NODES)) as devnet:
            lanes = {} if args.lanes is None else {"fetch_lanes": args.lanes}
            set_storage(devnet, fsync=not args.no_fsync, **lanes)
            start_devnet(devnet, profile=profile)
            wait_for_lanes(devnet, -1 if args.lanes is None else args.lanes)
            cid, add_s = cli_add(devnet, source)
            results["cli_add_mb_per_s"] = round(size / add_s / MB, 1)
            print(
                f"store add (CLI)             {results['cli_add_mb_per_s']:>8.1f} MB/s "
                f"({add_s:.2f} s)"
            )
            for index, providers in ((1, 1), (2, 2), (3, 3)):
                before = nodes_cpu_seconds(devnet)
                outcome = fetch(devnet, index, cid)
                after = nodes_cpu_seconds(devnet)
                cpu = [round(b - a, 2) for a, b in zip(before, after, strict=True)]
                seconds = outcome["duration_ms"] / 1000
                figure = round(size / seconds / MB, 1)
                results[f"fetch_{providers}_providers_mb_per_s"] = figure
                results[f"fetch_{providers}_providers_by_peer"] = outcome["bytes_by_peer"]
                results[f"fetch_{providers}_providers_cpu_s_by_node"] = cpu
                print(
                    f"fetch from {providers} provider(s)     {figure:>8.1f} MB/s ({seconds:.2f} s,"
                    f" {len(outcome['bytes_by_peer'])} peers sent blocks; CPU s by node {cpu},"
                    f" {sum(cpu):.2f} in all)"
                )
        if profile is not None and profile.exists():
            text = print_profile(profile)
            print(text)
            results["profile_node3_top"] = text.splitlines()[:40]
    results["targets"] = {
        "local_add_over_sha256": round(
            results["local_add_mb_per_s"] / results["sha256_mb_per_s"], 3
        ),
        "local_add_at_least_half_sha256": results["local_add_mb_per_s"]
        >= 0.5 * results["sha256_mb_per_s"],
        "local_add_no_fsync_over_sha256": no_fsync["add_over_sha256"],
        "fetch_3_over_raw_stream": round(
            results["fetch_3_providers_mb_per_s"] / results["raw_stream_mb_per_s"], 3
        ),
        "fetch_3_faster_than_one_stream": results["fetch_3_providers_mb_per_s"]
        > results["raw_stream_mb_per_s"],
    }
    print(json.dumps(results["targets"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
