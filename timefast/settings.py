"""The node's settings (SPEC 2): environment variables, overridden by CLI flags.

``SETTINGS`` is the single list of every setting; ``--help``, the README's table
(checked by a test) and ``load`` all come from it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timefast import crypto


class SettingsError(ValueError):
    """A setting with a value the node cannot use."""


def parse_addr(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) to a host and a port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _int(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise SettingsError(f"{text!r} is not an integer") from None
        if v < lo:
            raise SettingsError(f"{v} is below {lo}")
        return v
    return parse


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise SettingsError(f"{text!r} is not a number") from None
    if v < 0:
        raise SettingsError(f"{v} is negative")
    return v


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise SettingsError(f"{text!r} is not one of {', '.join(options)}")
        return text
    return parse


def _list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _str(text: str) -> str:
    return text


def host_port(text: str) -> str:
    host, port = parse_addr(text.strip())
    if not host or host in ("0.0.0.0", "::") or port == 0:
        raise SettingsError(f"{text!r} is not an address others can dial")
    return text.strip()


def _peers(text: str) -> tuple[str, ...]:
    return tuple(host_port(p) for p in _list(text))


def _private_key(text: str) -> str:
    try:
        crypto.parse_private_key(text)
    except crypto.KeyFormatError as e:
        raise SettingsError(str(e)) from None
    return text.strip()


def _public_keys(text: str) -> tuple[str, ...]:
    keys = _list(text)
    for k in keys:
        if not crypto.is_public_key_hex(k):
            raise SettingsError(f"{k!r} is not a public key (64 hex characters)")
    return keys


def _bus_urls(text: str) -> tuple[str, ...]:
    urls = _list(text)
    for u in urls:
        scheme, sep, rest = u.partition("://")
        if not sep or scheme not in ("nats", "tls") or not rest:
            raise SettingsError(f"{u!r} is not a NATS URL (nats://HOST:PORT)")
    return urls


def _http_url(text: str) -> str:
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise SettingsError(f"{text!r} is not an RPC URL (http://HOST:PORT/)")
    return text.strip()


_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def _bool(text: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise SettingsError(f"{text!r} is not 1 or 0") from None


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its variable, its default as text, what it means, its parser."""

    name: str
    default: str | None
    meaning: str
    parse: Callable[[str], Any]
    shown_default: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.lower().replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("WS_ADDR", "0.0.0.0:8765", "wallet WebSocket (and /health, /metrics)", parse_addr),
    Setting("RPC_ADDR", "127.0.0.1:8766", "node JSON-RPC (HTTP POST and WebSocket)",
            parse_addr),
    Setting("DATA_DIR", "~/.timefast", "SQLite database, node key", _str),
    Setting("NETWORK", "regtest",
            "`regtest` (standalone, faucet and `generate`), `testnet`, `mainnet`",
            _choice("regtest", "testnet", "mainnet")),
    Setting("BLOCK_INTERVAL", "600", "seconds between blocks; `0`: blocks only on `generate`",
            _float),
    Setting("MASTERNODE_KEY", None, "`MN` + 64 hex (ed25519 private key)", _private_key,
            "generated once, kept in `DATA_DIR` (mode 0600)"),
    Setting("MASTERNODES", None, "comma-separated ed25519 public keys (hex) of the voting set",
            _public_keys, "this node alone"),
    Setting("FINALITY_TIMEOUT", "10",
            "seconds a transaction may wait for quorum before it is rejected", _float),
    Setting("P2P_ADDR", None, "listen address for peers (WebSocket, path `/p2p`); the node "
            "listens only when `P2P_ADDR` or `PEERS` is set or `MASTERNODES` names more than "
            "itself", parse_addr, "mainnet `0.0.0.0:24000`, testnet `0.0.0.0:24100`, regtest "
            "`127.0.0.1:24200`"),
    Setting("P2P_ADVERTISE", None, "`host:port` others should dial (in `Hello.listen` and "
            "`Addr`)", host_port, "the listen address when it is not 0.0.0.0"),
    Setting("PEERS", None, "comma-separated `host:port` the node dials and keeps dialling "
            "(backoff 1 s doubling to 30 s)", _peers, "unset"),
    Setting("P2P_DISCOVERY", "1", "`0`: dial `PEERS` only, ignore `Addr`", _bool),
    Setting("MAX_PEERS", "64", "inbound peer connections (masternodes of the voting set are "
            "always let in)", _int(0)),
    Setting("MAX_P2P_MESSAGE_BYTES", "8388608", "a larger peer message closes the link "
            "(1009)", _int(65536)),
    Setting("TIMEOUT_PROPOSE", "3", "seconds a round waits for a proposal (round r: the value "
            "+ r × half of it)", _float),
    Setting("TIMEOUT_PREVOTE", "1", "seconds a round waits for prevotes after q of any kind",
            _float),
    Setting("TIMEOUT_PRECOMMIT", "1", "seconds a round waits for precommits after q of any "
            "kind", _float),
    Setting("MAX_CONNECTIONS", "10000", "above it: HTTP 503", _int(1)),
    Setting("MAX_CONNECTIONS_PER_IP", "128", "`0` = no limit", _int(0)),
    Setting("MAX_SUBSCRIPTIONS", "10000", "addresses per connection", _int(1)),
    Setting("MAX_MESSAGE_BYTES", "1048576", "larger inbound message: close 1009", _int(64)),
    Setting("SEND_BUFFER_BYTES", "1048576",
            "outbound bytes queued for one connection before it is treated as slow",
            _int(1024)),
    Setting("HEARTBEAT_INTERVAL", "30",
            "seconds between server pings; no pong within two intervals: close", _float),
    Setting("REPLAY_EVENTS", "100000", "events kept for resume", _int(1)),
    Setting("REPLAY_BYTES", "268435456",
            "bytes of kept events for resume (with `REPLAY_EVENTS`, whichever binds first)",
            _int(1)),
    Setting("WALLET_RATE", "1000", "messages a wallet may send per second (`RATE_LIMITED` "
            "beyond)", _float),
    Setting("WALLET_BURST", "2000", "messages a wallet may send in one burst", _int(1)),
    Setting("OPEN_TIMEOUT", "10", "seconds a wallet has to finish its TLS and WebSocket "
            "handshake", _float),
    Setting("CLOSE_TIMEOUT", "5", "seconds a closing wallet has before its TCP connection is "
            "cut", _float),
    Setting("COMMIT_BATCH", "1024", "ledger requests (wallets, RPC, timers) committed "
            "together at most", _int(1)),
    Setting("EVENT_BUS", None, "NATS JetStream server(s) (`nats://host:port`, "
            "comma-separated) the masternode publishes its events to, and an edge reads "
            "them from (docs/EDGES.md)", _bus_urls, "unset (none)"),
    Setting("NODE_RPC", None, "`time-masternode edge` only: the masternode's RPC URL "
            "(`http://host:port/`)", _http_url, "unset"),
    Setting("TLS_CERT", None, "certificate (PEM); with `TLS_KEY`: wss:// on `WS_ADDR`", _str,
            "unset"),
    Setting("TLS_KEY", None, "private key (PEM) for `TLS_CERT`", _str, "unset"),
    Setting("ALLOWED_ORIGINS", None, "comma-separated Origin allow-list", _list,
            "unset (any)"),
    Setting("ALLOW_NO_ORIGIN", "1", "with `ALLOWED_ORIGINS` set: whether clients that send "
            "no `Origin` (native wallets) are let in", _bool),
    Setting("RPC_USER", None, "HTTP basic auth user on the RPC (with `RPC_PASSWORD`)", _str,
            "unset"),
    Setting("RPC_PASSWORD", None, "HTTP basic auth password on the RPC (with `RPC_USER`)",
            _str, "unset"),
    Setting("RPC_ALLOWED_HOSTS", None, "comma-separated `Host` names the RPC answers to, "
            "besides IP literals and `localhost`", _list, "unset"),
    Setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING, ERROR",
            _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    Setting("LOG_FORMAT", "text", "`text`, or `json` for one JSON object per line",
            _choice("text", "json")),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Parsed settings; attribute names are the variables in lower case."""

    ws_addr: tuple[str, int]
    rpc_addr: tuple[str, int]
    data_dir: Path
    network: str
    block_interval: float
    masternode_key: str | None
    masternodes: tuple[str, ...] | None
    finality_timeout: float
    p2p_addr: tuple[str, int] | None
    p2p_advertise: str | None
    peers: tuple[str, ...] | None
    p2p_discovery: bool
    max_peers: int
    max_p2p_message_bytes: int
    timeout_propose: float
    timeout_prevote: float
    timeout_precommit: float
    max_connections: int
    max_connections_per_ip: int
    max_subscriptions: int
    max_message_bytes: int
    send_buffer_bytes: int
    heartbeat_interval: float
    replay_events: int
    replay_bytes: int
    wallet_rate: float
    wallet_burst: int
    open_timeout: float
    close_timeout: float
    commit_batch: int
    event_bus: tuple[str, ...] | None
    node_rpc: str | None
    tls_cert: str | None
    tls_key: str | None
    allowed_origins: tuple[str, ...] | None
    allow_no_origin: bool
    rpc_user: str | None
    rpc_password: str | None
    rpc_allowed_hosts: tuple[str, ...]
    log_level: str
    log_format: str


P2P_DEFAULTS = {"mainnet": ("0.0.0.0", 24000), "testnet": ("0.0.0.0", 24100),
                "regtest": ("127.0.0.1", 24200)}


def p2p_listen(s: Settings, public_key: str) -> tuple[str, int] | None:
    """Where the node listens for peers, or None when it does not (SPEC 7.1): only
    when ``P2P_ADDR`` or ``PEERS`` is set or ``MASTERNODES`` names more than this
    node (``public_key``)."""
    if s.p2p_addr is not None:
        return s.p2p_addr
    others = [k for k in (s.masternodes or ()) if k.lower() != public_key]
    if s.peers or others:
        return P2P_DEFAULTS[s.network]
    return None


def shown_default(s: Setting) -> str:
    """The default as the docs show it."""
    if s.shown_default is not None:
        return s.shown_default
    return f"`{s.default}`"


def parser() -> argparse.ArgumentParser:
    """The CLI of ``time-masternode``: one flag per setting."""
    p = argparse.ArgumentParser(
        prog="time-masternode",
        description="TIME Coin masternode with real-time wallet notifications. Every "
                    "setting is an environment variable; a flag of the same name "
                    "overrides it.",
    )
    for s in SETTINGS:
        default = s.shown_default or s.default
        p.add_argument(s.flag, dest=s.name, metavar=s.name,
                       help=f"{s.meaning.replace('`', '')} (default: {default})".replace("%",
                                                                                        "%%"))
    return p


def load(argv: Sequence[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: the process's) overridden by ``argv``."""
    env = os.environ if environ is None else environ
    args = vars(parser().parse_args(argv if argv is not None else []))
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = args.get(s.name)
        if raw is None:
            raw = env.get(s.name)
        if raw is None or raw == "":
            raw = s.default
        if raw is None:
            values[s.name.lower()] = None
            continue
        try:
            values[s.name.lower()] = s.parse(raw)
        except SettingsError as e:
            raise SettingsError(f"{s.name}: {e}") from None
    values["data_dir"] = Path(values["data_dir"]).expanduser()
    if values["masternodes"] == ():
        values["masternodes"] = None
    if values["peers"] == ():
        values["peers"] = None
    if values["block_interval"] == 0 and values["network"] != "regtest":
        # A network whose blocks come only from generate would never confirm.
        raise SettingsError("BLOCK_INTERVAL=0 (blocks only on generate) is for regtest")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise SettingsError("TLS_CERT and TLS_KEY must be set together")
    if bool(values["rpc_user"]) != bool(values["rpc_password"]):
        # One without the other would leave the RPC open while looking closed.
        raise SettingsError("RPC_USER and RPC_PASSWORD must be set together")
    values["rpc_allowed_hosts"] = values["rpc_allowed_hosts"] or ()
    values["event_bus"] = values["event_bus"] or None
    return Settings(**values)
