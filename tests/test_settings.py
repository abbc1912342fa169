"""Settings: environment, flags, defaults, and the README's table (SPEC 2)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from timefast.settings import SETTINGS, SettingsError, load, shown_default

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_table_matches_the_code():
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| (.*?) \| (.*?) \|$", README.read_text(), re.M)
    assert [r[0] for r in rows] == [s.name for s in SETTINGS]
    for (name, default, meaning), s in zip(rows, SETTINGS, strict=True):
        assert default == shown_default(s), name
        assert meaning == s.meaning, name


def test_defaults():
    s = load([], {})
    assert s.ws_addr == ("0.0.0.0", 8765) and s.rpc_addr == ("127.0.0.1", 8766)
    assert s.network == "regtest" and s.block_interval == 600
    assert s.masternodes is None and s.max_connections_per_ip == 128
    assert s.data_dir == Path("~/.timefast").expanduser()


def test_flag_overrides_environment():
    a, b = "a" * 64, "B" * 64
    s = load(["--ws-addr", "127.0.0.1:9000"], {"WS_ADDR": "0.0.0.0:9001",
                                                "MASTERNODES": f"{a}, {b}"})
    assert s.ws_addr == ("127.0.0.1", 9000)
    assert s.masternodes == (a, b)


@pytest.mark.parametrize(("env", "words"), [
    ({"WS_ADDR": "nonsense"}, "WS_ADDR"),
    ({"NETWORK": "moon"}, "NETWORK"),
    ({"MAX_CONNECTIONS": "lots"}, "MAX_CONNECTIONS"),
    ({"TLS_CERT": "c.pem"}, "TLS_CERT and TLS_KEY"),
    ({"RPC_PASSWORD": "s3cret"}, "RPC_USER and RPC_PASSWORD"),
    ({"RPC_USER": "alice"}, "RPC_USER and RPC_PASSWORD"),
    ({"ALLOW_NO_ORIGIN": "maybe"}, "ALLOW_NO_ORIGIN"),
])
def test_bad_values_are_named(env, words):
    with pytest.raises(SettingsError, match=words):
        load([], env)


def test_help_lists_every_setting():
    out = subprocess.run([sys.executable, "-m", "timefast", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for s in SETTINGS:
        assert s.flag in out


def test_bad_setting_exits_2_with_a_message():
    p = subprocess.run([sys.executable, "-m", "timefast", "--network", "moon"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "moon" in p.stderr


def test_blocks_only_on_generate_is_for_regtest():
    assert load([], {"BLOCK_INTERVAL": "0"}).block_interval == 0
    for network in ("testnet", "mainnet"):
        with pytest.raises(SettingsError, match="BLOCK_INTERVAL=0"):
            load([], {"BLOCK_INTERVAL": "0", "NETWORK": network})


def test_peer_settings():
    s = load([], {"PEERS": "10.0.0.1:24100, node-b:24100", "P2P_ADDR": "0.0.0.0:24100",
                  "P2P_ADVERTISE": "node-a:24100", "MAX_PEERS": "8"})
    assert s.peers == ("10.0.0.1:24100", "node-b:24100") and s.max_peers == 8
    assert s.p2p_addr == ("0.0.0.0", 24100) and s.p2p_advertise == "node-a:24100"
    for name, value in [("PEERS", "nohost"), ("P2P_ADVERTISE", "0.0.0.0:24100"),
                        ("PEERS", "a:0")]:
        with pytest.raises(SettingsError, match=name):
            load([], {name: value})


def test_the_node_listens_for_peers_only_when_it_has_some():
    from timefast.settings import p2p_listen
    me, other = "a" * 64, "b" * 64
    assert p2p_listen(load([], {}), me) is None
    assert p2p_listen(load([], {"MASTERNODES": me}), me) is None
    assert p2p_listen(load([], {"MASTERNODES": f"{me},{other}"}), me) == ("127.0.0.1", 24200)
    assert p2p_listen(load([], {"PEERS": "h:1"}), me) == ("127.0.0.1", 24200)
    assert p2p_listen(load([], {"P2P_ADDR": "127.0.0.1:0"}), me) == ("127.0.0.1", 0)
    assert p2p_listen(load([], {"NETWORK": "testnet", "PEERS": "h:1"}), me) == (
        "0.0.0.0", 24100)
