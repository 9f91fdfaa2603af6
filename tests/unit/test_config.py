from __future__ import annotations

from pathlib import Path

import pytest

from prsm_node.config import NodeConfig, load_config, render_toml, with_overrides
from prsm_node.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_example_file_is_the_rendered_defaults() -> None:
    assert (REPO / "node.toml.example").read_text() == render_toml()


def test_rendered_defaults_load_back_to_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, render_toml())) == NodeConfig()


def test_rendered_custom_config_round_trips(tmp_path: Path) -> None:
    custom = with_overrides(
        NodeConfig(),
        {"network.listen": ["/ip4/127.0.0.1/tcp/0"], "log.level": "debug"},
    )
    assert load_config(write(tmp_path, render_toml(custom))) == custom


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.toml") == NodeConfig()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[network]\npeers_maxx = 3\n", "network.peers_maxx", "unknown key"),
        ("[netwrk]\n", "netwrk", "unknown section"),
        ("[network]\npeers_max = 'ten'\n", "network.peers_max", "expected an integer"),
        ("[network]\npeers_max = true\n", "network.peers_max", "expected an integer"),
        ("[network]\npeer_exchange = 1\n", "network.peer_exchange", "expected a boolean"),
        ("[network]\npeers_max = 0\n", "network.peers_max", "between 1 and"),
        ("[log]\nlevel = 'loud'\n", "log.level", "must be one of"),
        ("[network]\nlisten = ['/ip4/1.2.3/tcp/1']\n", "network.listen", "invalid multiaddr"),
        ("[network]\nlisten = ['/ip4/127.0.0.1/udp/1']\n", "network.listen", "only TCP"),
        (
            "[network]\nbootstrap = ['/ip4/127.0.0.1/tcp/1']\n",
            "network.bootstrap",
            "/p2p/<peer id>",
        ),
        ("[network]\nlisten = [3]\n", "network.listen", "expected a string"),
        ("network = 3\n", "network", "expected a table"),
        (
            "[network]\ndial_backoff_initial_ms = 9000\ndial_backoff_max_ms = 10\n",
            "network.dial_backoff_initial_ms",
            "must not exceed",
        ),
        ("[registry]\nmesh_degree = 13\n", "registry.mesh_degree", "mesh_degree_low <="),
        (
            "[registry]\nsync_page_bytes_max = 8388608\n",
            "registry.sync_page_bytes_max",
            "below network.frame_size_max",
        ),
        (
            "[registry]\ncapability_ttl_ms = 20000\n",
            "registry.capability_ttl_ms",
            "must exceed registry.announce_interval_ms",
        ),
        ("[registry]\nprice_hints = ['inference=1.5']\n", "registry.price_hints", "BASE_UNITS"),
        ("[registry]\njob_kinds = ['']\n", "registry.job_kinds", "1 to 64"),
    ],
)
def test_bad_config_names_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(path) in str(caught.value) and key in str(caught.value)
    assert caught.value.exit_code == 2


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[network\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path)
    assert caught.value.file == str(path)


def test_overrides_are_checked_like_the_file() -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(NodeConfig(), {"network.bootstrap": ["/ip4/127.0.0.1/tcp/9"]})
    assert caught.value.file == "command line"
    assert caught.value.key == "network.bootstrap"


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, "[network]\nlisten = ['/ip4/127.0.0.1/tcp/5']\n"))
    merged = with_overrides(loaded, {"network.listen": ["/ip4/127.0.0.1/tcp/6"]})
    assert merged.network.listen == ("/ip4/127.0.0.1/tcp/6",)
    assert merged.network.peers_max == loaded.network.peers_max
