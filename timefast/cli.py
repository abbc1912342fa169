"""``time-cli``: call the node's JSON-RPC, make keys, build and send transactions."""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from timefast import transaction
from timefast.crypto import (
    KeyFormatError,
    address_of,
    format_private_key,
    is_public_key_hex,
    new_key,
    parse_private_key,
    public_key_hex,
)
from timefast.transaction import COIN


class CliError(Exception):
    """Something the user should read; printed without a traceback."""


def to_units(text: str) -> int:
    """TIME (``12.5``) to integer units of 10^-8 TIME."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CliError(f"{text!r} is not an amount of TIME") from None
    units = value * COIN
    if units != units.to_integral_value() or units <= 0:
        raise CliError(f"{text} TIME is not a positive multiple of 0.00000001")
    return int(units)


class Rpc:
    """A JSON-RPC 2.0 client over HTTP POST."""

    def __init__(self, addr: str, user: str | None = None, password: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = addr if addr.startswith(("http://", "https://")) else f"http://{addr}/"
        self.auth = None
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.auth = f"Basic {token}"
        self.timeout = timeout
        self.next_id = 0

    def call(self, method: str, *params: Any) -> Any:
        self.next_id += 1
        body = orjson.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                             "params": list(params)})
        req = urllib.request.Request(self.url, data=body,
                                     headers={"Content-Type": "application/json"})
        if self.auth:
            req.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = orjson.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise CliError(f"RPC refused: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"cannot reach the node at {self.url}: {e}") from None
        if "error" in reply:
            err = reply["error"]
            raise CliError(f"error {err.get('code')}: {err.get('message')}")
        return reply["result"]


def _arg(text: str) -> Any:
    """A CLI argument as JSON when it parses (numbers, objects), else as a string."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _print(value: Any) -> None:
    if isinstance(value, str | int):
        print(value)
    else:
        print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def cmd_keygen(args: argparse.Namespace, rpc: Rpc) -> Any:
    key = new_key()
    pub = public_key_hex(key)
    return {"private_key": format_private_key(key), "public_key": pub,
            "address": address_of(pub, args.network)}


def cmd_address(args: argparse.Namespace, rpc: Rpc) -> Any:
    text = args.key
    if is_public_key_hex(text):
        return address_of(text.lower(), args.network)
    return address_of(public_key_hex(parse_private_key(text)), args.network)


def cmd_send(args: argparse.Namespace, rpc: Rpc) -> Any:
    key = parse_private_key(args.key)
    amount = to_units(args.amount)
    fee = to_units(args.fee) if args.fee not in (None, "0") else 0
    network = rpc.call("getinfo")["network"]
    source = address_of(public_key_hex(key), network)
    coins = sorted((u for u in rpc.call("listunspent", source) if u["state"] == "Unspent"),
                   key=lambda u: -u["amount"])
    picked, total = [], 0
    for u in coins:
        picked.append((u["txid"], u["vout"], key))
        total += u["amount"]
        if total >= amount + fee:
            break
    if total < amount + fee:
        raise CliError(f"{source} has {total} spendable units; {amount + fee} needed")
    outputs = [(args.to, amount)]
    if total > amount + fee:
        outputs.append((source, total - amount - fee))
    tx = transaction.build(picked, outputs, timestamp=int(time.time()))
    if args.dry_run:
        return tx.to_json()
    return rpc.call("sendrawtransaction", tx.to_json())


def cmd_faucet(args: argparse.Namespace, rpc: Rpc) -> Any:
    if args.amount is not None:
        amount = to_units(args.amount)
    elif args.units is not None:
        amount = int(args.units)
    else:
        raise CliError("faucet needs --amount TIME (or an amount in units)")
    return rpc.call("faucet", args.address, amount)


COLOURS = {"Locked": "33", "SpentPending": "33", "SpentFinalized": "32", "Confirmed": "36",
           "Unspent": "32", "TransactionRejected": "31", "Lagged": "31", "NewBlock": "35"}


def _paint(text: str, colour: str | None, tty: bool) -> str:
    return f"\033[{colour}m{text}\033[0m" if tty and colour else text


def describe(msg: dict[str, Any], tty: bool) -> str:
    """One event as one line for ``watch``."""
    t, d = msg.get("type", "?"), msg.get("data") or {}
    seq = d.get("seq", "")
    if t == "UtxoStateChange":
        op = d["outpoint"]
        amount = Decimal(d["amount"]) / COIN
        state = _paint(d["state"], COLOURS.get(d["state"]), tty)
        line = (f"{d['address']} {op['txid'][:12]}:{op['vout']} {amount} TIME "
                f"{d.get('prev_state') or 'new'} -> {state} (votes {d['votes']}/{d['quorum']})")
    elif t == "TransactionPending":
        line = f"tx {d['tx']['txid'][:12]} pending"
    elif t == "TransactionFinalized":
        line = f"tx {d['txid'][:12]} {_paint('finalized', '32', tty)} ({d['votes']}/{d['quorum']})"
    elif t == "TransactionConfirmed":
        line = f"tx {d['txid'][:12]} {_paint('confirmed', '36', tty)} in block {d['block_height']}"
    elif t == "TransactionRejected":
        line = f"tx {d['txid'][:12]} {_paint('rejected', '31', tty)}: {d['reason']}"
    elif t == "NewBlock":
        line = _paint(f"block {d['height']} {d['hash'][:16]} ({d['tx_count']} tx)", "35", tty)
    else:
        line = orjson.dumps(msg).decode()
    stamp = time.strftime("%H:%M:%S")
    return f"{stamp} {_paint(f'#{seq}', '2', tty)} {_paint(t, '1', tty)} {line}"


def watch(url: str, addresses: list[str], out: Any = None,
          max_events: int | None = None) -> int:
    """Show a wallet's events live; reconnect and resume by ``seq`` on any drop."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    from websockets.sync.client import connect

    out = out or sys.stdout
    tty = out.isatty()
    last_seq: int | None = None
    shown = 0
    delay = 0.5
    while True:
        try:
            with connect(url, open_timeout=10) as ws:
                data: dict[str, Any] = {"addresses": addresses, "snapshot": last_seq is None}
                if last_seq is not None:
                    data["since_seq"] = last_seq
                ws.send(orjson.dumps({"type": "Subscribe", "data": data}).decode())
                delay = 0.5
                for raw in ws:
                    msg = orjson.loads(raw)
                    d = msg.get("data") or {}
                    if msg["type"] == "Subscribed":
                        if last_seq is None:
                            last_seq = d["seq"]
                            for a, snap in (d.get("snapshot") or {}).items():
                                bal = Decimal(snap["balance"]) / COIN
                                print(f"watching {a}: balance {bal} TIME, "
                                      f"{len(snap['utxos'])} UTXO(s)", file=out, flush=True)
                        continue
                    if msg["type"] == "Error":
                        print(f"error: {d.get('code')}: {d.get('message')}", file=out,
                              flush=True)
                        return 1
                    if isinstance(d.get("seq"), int):
                        last_seq = d["seq"]
                    if msg["type"] == "Lagged":
                        last_seq = d["resume_from"]
                    print(describe(msg, tty), file=out, flush=True)
                    shown += 1
                    if max_events is not None and shown >= max_events:
                        return 0
        except (OSError, ConnectionClosed, InvalidHandshake) as e:
            print(_paint(f"connection lost ({e}); reconnecting", "31", tty), file=out,
                  flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 10)


def cmd_watch(args: argparse.Namespace, rpc: Rpc) -> Any:
    try:
        return watch(args.ws_url, args.addresses, max_events=args.max_events)
    except KeyboardInterrupt:
        return 0


def _consensus(info: dict[str, Any]) -> str:
    c = info.get("consensus") or {}
    return f"height {c.get('height')} round {c.get('round')} {c.get('step')}"


def cmd_status(args: argparse.Namespace, rpc: Rpc) -> Any:
    first = rpc.call("getinfo")
    time.sleep(args.interval)
    info = rpc.call("getinfo")
    rate = (info.get("events_published", 0) - first.get("events_published", 0)) / args.interval
    return (f"network      {info['network']}\n"
            f"height       {info['height']} ({info['best_block_hash'][:16]})\n"
            f"masternode   {info['address']} (quorum {info['quorum']} of "
            f"{info['masternodes']})\n"
            f"peers        {info.get('peers', 0)}\n"
            f"consensus    {_consensus(info)}\n"
            f"connections  {info.get('connections', 0)}\n"
            f"subscriptions {info.get('subscriptions', 0)}\n"
            f"events/s     {rate:.1f}\n"
            f"pending tx   {info['pending']}, finalized unconfirmed {info['unconfirmed']}")


def cmd_peers(args: argparse.Namespace, rpc: Rpc) -> Any:
    peers = rpc.call("getpeerinfo")
    masternodes = rpc.call("masternodelist")
    lines = [f"{'public key':<16}  {'address':<21}  {'dir':<3}  {'kind':<10}  "
             f"{'height':>6}  {'ms':>7}  misbehaviour"]
    for p in peers:
        ms = "-" if p["latency_ms"] is None else f"{p['latency_ms']:.1f}"
        lines.append(f"{p['public_key'][:16]}  {p['address']:<21}  "
                     f"{'in' if p['inbound'] else 'out':<3}  "
                     f"{'masternode' if p['masternode'] else 'full node':<10}  "
                     f"{p['height']:>6}  {ms:>7}  {p['misbehaviour']}")
    up = sum(1 for m in masternodes if m.get("connected"))
    lines.append(f"masternodes connected: {up} of {len(masternodes)} (this node included)")
    for m in masternodes:
        if m.get("equivocations"):
            lines.append(f"equivocations by {m['public_key'][:16]}: {m['equivocations']}")
    return "\n".join(lines)


def cmd_history(args: argparse.Namespace, rpc: Rpc) -> Any:
    return rpc.call("getaddresshistory", args.address, args.limit, args.before)


# Options before the command that take a value: the word after them is that value,
# never the command (``time-cli --rpc-addr HOST:PORT getinfo``).
VALUE_OPTIONS = ("--rpc-addr", "--rpc-user", "--rpc-password", "--network")


def _command_index(argv: list[str]) -> int | None:
    """Where the command (or RPC method) is in ``argv``, or None."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return i + 1 if i + 1 < len(argv) else None
        if not word.startswith("-"):
            return i
        i += 2 if word in VALUE_OPTIONS else 1
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="time-cli",
        description="Talk to a timefast node. Any RPC method: time-cli METHOD ARGS... "
                    "(arguments are parsed as JSON when they can be). Amounts given with "
                    "--amount are in TIME (12.5); RPC amounts are integer units of 10^-8.")
    p.add_argument("--rpc-addr", default=os.environ.get("RPC_ADDR", "127.0.0.1:8766"),
                   help="node RPC address (default: $RPC_ADDR or 127.0.0.1:8766)")
    p.add_argument("--rpc-user", default=os.environ.get("RPC_USER"))
    p.add_argument("--rpc-password", default=os.environ.get("RPC_PASSWORD"))
    p.add_argument("--network", default=os.environ.get("NETWORK", "regtest"),
                   choices=["regtest", "testnet", "mainnet"],
                   help="address format for keygen and address (default: regtest)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("keygen", help="make a new key, its public key and address")
    a = sub.add_parser("address", help="the address of a key (MN... or public key hex)")
    a.add_argument("key")
    s = sub.add_parser("send", help="build, sign and send a payment")
    s.add_argument("--key", required=True, help="the sender's MN... private key")
    s.add_argument("--to", required=True, help="recipient address")
    s.add_argument("--amount", required=True, help="amount in TIME, like 12.5")
    s.add_argument("--fee", default="0", help="fee in TIME (default 0)")
    s.add_argument("--dry-run", action="store_true", help="print the signed tx, do not send")
    w = sub.add_parser("watch", help="live view of addresses' events (resumes by seq)")
    w.add_argument("addresses", nargs="+")
    w.add_argument("--ws-url", default=os.environ.get("WS_URL", "ws://127.0.0.1:8765"),
                   help="wallet WebSocket (default: $WS_URL or ws://127.0.0.1:8765)")
    w.add_argument("--max-events", type=int, default=None, help="stop after N events")
    st = sub.add_parser("status", help="height, connections, subscriptions, events/s")
    st.add_argument("--interval", type=float, default=1.0, help="seconds to sample events/s")
    h = sub.add_parser("history", help="an address's transactions, newest first")
    h.add_argument("address")
    h.add_argument("--limit", type=int, default=50, help="transactions per page (<= 1000)")
    h.add_argument("--before", type=int, default=None, help="the next of the previous page")
    sub.add_parser("peers", help="peer links and which masternodes are connected")
    f = sub.add_parser("faucet", help="regtest: pay from the faucet")
    f.add_argument("address")
    f.add_argument("units", nargs="?", help="amount in units of 10^-8 TIME")
    f.add_argument("--amount", help="amount in TIME, like 12.5")
    return p


COMMANDS = {"keygen": cmd_keygen, "address": cmd_address, "send": cmd_send,
            "faucet": cmd_faucet, "watch": cmd_watch, "status": cmd_status,
            "history": cmd_history, "peers": cmd_peers}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``time-cli``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Any word that is not one of our commands is an RPC method name.
    first = _command_index(argv)
    generic = first is not None and argv[first] not in COMMANDS
    if generic and first is not None:
        args = parser.parse_args(argv[:first])
        method, params = argv[first], [_arg(x) for x in argv[first + 1:]]
    else:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
    rpc = Rpc(args.rpc_addr, args.rpc_user, args.rpc_password)
    try:
        result = rpc.call(method, *params) if generic else COMMANDS[args.command](args, rpc)
        if args.command == "watch" and not generic:
            return int(result)
        _print(result)
        sys.stdout.flush()
    except (CliError, KeyFormatError) as e:
        print(f"time-cli: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`time-cli getinfo | head`): nothing more to say. Point
        # stdout at /dev/null so that the interpreter's own flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
