"""build_host sets py-libp2p's yamux window-update switch from network config."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import trio
from libp2p.stream_muxer.yamux import yamux
from nacl.signing import SigningKey

from prsm_node.config import NetworkConfig
from prsm_node.net.host import YAMUX_RELEASE_ON_READ, build_host


@pytest.mark.parametrize("every_read", [False, True])
def test_yamux_returns_window_credit_as_the_config_says(
    monkeypatch: pytest.MonkeyPatch, every_read: bool
) -> None:
    """The library reads the switch at every read: it must see what the config chose
    (off by default: credit once half the window is read, as go-yamux)."""
    monkeypatch.delenv(YAMUX_RELEASE_ON_READ, raising=False)
    events, _ = trio.open_memory_channel(8)
    config = replace(NetworkConfig(), yamux_window_update_every_read=every_read)
    build_host(bytes(SigningKey.generate()), config, events)
    assert os.environ[YAMUX_RELEASE_ON_READ] == ("1" if every_read else "0")
    assert yamux._yamux_release_on_read() is every_read


def test_yamux_window_update_every_read_is_off_by_default() -> None:
    assert NetworkConfig().yamux_window_update_every_read is False
