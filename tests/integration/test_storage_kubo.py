"""With `storage.kubo_api` set, a node pushes every block it stores to Kubo's HTTP RPC.

There is no Kubo daemon in the test environment, so Kubo is stood in for by a tiny HTTP
server in this test process that implements the one endpoint the node uses the way Kubo
does (`POST /api/v0/block/put?cid-codec=...&mhtype=sha2-256`, the block as a multipart
file field, the answer `{"Key": <CIDv1>, "Size": n}`), computing the CID itself with the
codec the node asked for. It stands in for an external system, not for our own code.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from prsm_node.devnet import Devnet
from storage.cid import CODEC_DAG_PB, CODEC_RAW, Cid

from .test_storage_exchange import MIB, call, storage_devnet

pytestmark = pytest.mark.multiprocess

CODECS = {"raw": CODEC_RAW, "dag-pb": CODEC_DAG_PB}


class FakeKubo(BaseHTTPRequestHandler):
    blocks: ClassVar[dict[str, bytes]] = {}

    def do_POST(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path != "/api/v0/block/put" or query.get("mhtype") != ["sha2-256"]:
            self.send_error(400, "unsupported request")
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        part = next(message.iter_parts())
        data = part.get_payload(decode=True)
        cid = Cid.for_block(CODECS[query["cid-codec"][0]], data)
        self.blocks[str(cid)] = data
        answer = json.dumps({"Key": str(cid), "Size": len(data)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_kubo() -> Iterator[tuple[str, dict[str, bytes]]]:
    FakeKubo.blocks = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKubo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeKubo.blocks
    server.shutdown()
    server.server_close()


def test_every_added_block_is_pushed_to_kubo(
    make_devnet: Callable[..., Devnet], short_dir: Path, fake_kubo: tuple[str, dict[str, bytes]]
) -> None:
    url, received = fake_kubo
    devnet = storage_devnet(make_devnet, 1, kubo_api=url)
    source = short_dir / "model.bin"
    source.write_bytes(os.urandom(2 * MIB + 5))
    cid = call(devnet, 0, "store_add", {"path": str(source)})["cid"]
    stored = {row["cid"] for row in call(devnet, 0, "store_ls", {"blocks": True})["blocks"]}
    assert set(received) == stored and cid in received and len(stored) == 4
    counters = call(devnet, 0, "store_stat")["counters"]
    assert counters["kubo_pushed"] == 4 and counters["kubo_failed"] == 0
