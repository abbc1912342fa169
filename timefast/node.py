"""The assembled node: storage, ledger, wallet server, RPC and timers."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import resource
import signal
import ssl
from collections.abc import Callable
from typing import Any, cast

from nacl.signing import SigningKey

from timefast import __version__
from timefast.commits import GroupCommit
from timefast.consensus import Timeouts
from timefast.crypto import KeyFormatError, load_or_create_key
from timefast.datadir import DataDirError, DataDirLock, check_network
from timefast.ledger import Ledger
from timefast.p2p.addrs import AddrReactor
from timefast.p2p.blocksync import BlockSyncReactor
from timefast.p2p.gossip import ConsensusReactor
from timefast.p2p.mempool import MempoolReactor
from timefast.p2p.relay import RelayFilter
from timefast.p2p.rounds import RoundDriver
from timefast.p2p.switch import Switch
from timefast.p2p.votes import VotesReactor
from timefast.rpc import RpcDispatcher, RpcLimits, RpcService
from timefast.server import REFUSED_WAITING, WalletServer
from timefast.session import Limits
from timefast.settings import Settings, p2p_listen
from timefast.source import LedgerSource
from timefast.storage import Store

log = logging.getLogger("timefast")

EXPIRY_CHECK = 0.25  # seconds between FINALITY_TIMEOUT checks
# Descriptors the node holds besides its connections: database files for the writer
# and the checkpointer, the DATA_DIR lock, listening sockets, logs, the loop's own
# (23 measured on an idle node), with room to spare.
FD_RESERVE = 256
TRIM_INTERVAL = 30.0  # seconds between returns of freed heap memory to the OS
# Seconds between group commits on a masternode of a network (GroupCommit): peers hand
# work over a transaction or a vote batch at a time, and each commit's fixed costs
# (the commit, its fan-out, the relays and checker hand-offs it triggers) would
# otherwise be paid for a handful of items.  Four masternodes on two cores took 55
# tx/s to finality with none, 148 with 10 ms and 216 with 25 ms.
NETWORK_COMMIT_INTERVAL = 0.025


# The cyclic collector's first threshold (CPython's default: 700 new containers).
# Every wallet's connection makes a few hundred (websockets' protocol, the session,
# its parser's generators), so a reconnect storm at the default ran a young
# collection every few connections, and each older one walked every live
# connection: 10,000 wallets connecting took 15-25% more CPU.  Garbage cycles are
# rare here (connections are freed by reference counting when they close), so a
# larger first generation costs a few MB at most.
GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect cycles less often than CPython's default (``GC_THRESHOLD``)."""
    gc.set_threshold(*GC_THRESHOLD)


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none.

    Event payloads (about 1 KB each, 100,000 kept) come and go through malloc;
    the freed space is scattered between live blocks and glibc keeps it, so RSS
    creeps up with nothing leaking.  ``malloc_trim(0)`` hands whole free pages
    back (a few ms on a 200 MB heap).
    """
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to its hard limit; returns the soft limit after.

    Logs a warning when it stays below ``needed``: past it, wallets (or the
    database, opening its files) would get "too many open files".  systemd's
    default soft limit is 1,024, which MAX_CONNECTIONS's default passes tenfold.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # a seccomp filter may refuse
            log.warning("could not raise the open-file limit from %d: %s", soft, e)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open files limited to %d, below the %d that MAX_CONNECTIONS needs; "
                    "raise it (LimitNOFILE= in the systemd unit, ulimit -n, --ulimit nofile= "
                    "in Docker) or lower MAX_CONNECTIONS", soft, needed)
    return int(soft)


class Node:
    """A running masternode; ``start`` binds its ports, ``stop`` closes everything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock: DataDirLock | None = None
        self.store: Store | None = None
        self.ledger: Ledger | None = None
        self.commits: GroupCommit | None = None
        self.wallets: WalletServer | None = None
        self.rpc: RpcService | None = None
        self.peers: Switch | None = None
        self.rounds: RoundDriver | None = None
        self.mempool: MempoolReactor | None = None
        self.votes: VotesReactor | None = None
        self.blocksync: BlockSyncReactor | None = None
        self.gossip: ConsensusReactor | None = None
        self.bus: Any = None  # timefast.bus.Publisher, with EVENT_BUS
        self.ws_addresses: list[tuple[str, int]] = []
        self.p2p_addresses: list[tuple[str, int]] = []
        self.rpc_addresses: list[tuple[str, int]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._trim_timer: asyncio.TimerHandle | None = None
        self._trim = malloc_trim()
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        rpc_limits = RpcLimits(
            allowed_hosts=frozenset(h.lower().rstrip(".") for h in s.rpc_allowed_hosts))
        # One descriptor per wallet (handshake finished or not, and those waiting for
        # their 503) and per RPC connection.
        raise_fd_limit(s.max_connections + REFUSED_WAITING + rpc_limits.max_connections
                       + FD_RESERVE)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = DataDirLock(s.data_dir)
        try:
            key = load_or_create_key(s.data_dir, s.masternode_key)
        except KeyFormatError as e:
            self.lock.release()
            raise DataDirError(f"{s.data_dir / 'masternode.key'}: {e}") from None
        self.store = Store(s.data_dir / "timefast.db")
        try:
            check_network(self.store, s.network)
        except DataDirError:
            self.store.close()
            self.lock.release()
            raise
        self.ledger = Ledger(self.store, s.network, key, s.masternodes, s.finality_timeout,
                             s.replay_events, replay_bytes=s.replay_bytes)
        limits = Limits(s.max_subscriptions, s.max_message_bytes, s.send_buffer_bytes,
                        s.replay_events, s.wallet_rate, s.wallet_burst)
        origins: list[str | None] | None = None
        if s.allowed_origins:
            # websockets reads None in the list as "no Origin header": native wallets.
            origins = [*s.allowed_origins, *([None] if s.allow_no_origin else [])]
        # One group commit for every caller: wallets, the RPC and the timers.
        self.commits = GroupCommit(self.ledger, asyncio.get_running_loop(), s.commit_batch,
                                   NETWORK_COMMIT_INTERVAL if self.ledger.networked else 0.0)
        listen = p2p_listen(s, self.ledger.public_key)
        if listen is not None or self.ledger.networked:
            self._build_peers(key, listen)  # built now, started once the wallets listen
        source = LedgerSource(
            self.ledger, self.commits,
            peer_info=None if self.peers is None else self.peers.peer_info,
            extra_metrics=None if self.peers is None else self._network_metrics)
        self.wallets = WalletServer(self.ledger, limits, max_connections=s.max_connections,
                                    max_connections_per_ip=s.max_connections_per_ip,
                                    heartbeat_interval=s.heartbeat_interval, origins=origins,
                                    commits=self.commits, open_timeout=s.open_timeout,
                                    close_timeout=s.close_timeout, source=source)
        ctx = None
        if s.tls_cert and s.tls_key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
        self.ws_addresses = await self.wallets.listen(*s.ws_addr, ssl_context=ctx)
        if self.peers is not None:
            await self.peers.start(s.peers or ())
            if self.rounds is not None:
                self.rounds.start()
            self.p2p_addresses = self.peers.addresses
        auth = (s.rpc_user, s.rpc_password) if s.rpc_user and s.rpc_password else None
        dispatcher = RpcDispatcher(self.ledger, extra_info=self._extra_info,
                                   peers=self.peers, rounds=self.rounds)
        self.rpc = RpcService(dispatcher, auth, self.commits, rpc_limits)
        self.rpc_addresses = await self.rpc.listen(*s.rpc_addr)
        self._start_bus()
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(EXPIRY_CHECK, self._expire))
        if s.block_interval > 0 and self.rounds is None:
            # A network's heights are started by its round driver (RoundDriver).
            self._timers.append(loop.call_later(s.block_interval, self._block))
        if self._trim is not None:
            self._trim_timer = loop.call_later(TRIM_INTERVAL, self._release_memory)
        # What start made lives as long as the node (the ledger's tables, the replay
        # window read from disk): the collector need not walk it again.
        gc.collect()
        gc.freeze()
        scheme = "wss" if ctx else "ws"
        led = self.ledger
        listening = (f", peers ws://{self.p2p_addresses[0][0]}:{self.p2p_addresses[0][1]}"
                     "/p2p" if self.p2p_addresses else "")
        log.info("⏱  timefast %s on %s: wallets %s://%s:%d, RPC http://%s:%d%s, masternode %s "
                 "(%d in the voting set, quorum %d), height %d, seq %d", __version__,
                 led.network, scheme, *self.ws_addresses[0], *self.rpc_addresses[0], listening,
                 led.address, len(led.masternodes), led.quorum, led.height, led.seq)

    def _build_peers(self, key: SigningKey, listen: tuple[str, int] | None) -> None:
        """The switch, its reactors and (on a network) the round driver, each handed
        what it needs as it is built: the switch first, the reactors it dispatches
        to in the order they hear of a new peer (after the node's Status: Addr
        records, GetPending, own consensus messages, GetBlocks)."""
        s = self.settings
        assert self.ledger is not None and self.commits is not None
        switch = Switch(self.ledger, key, listen=listen, advertise=s.p2p_advertise,
                        discovery=s.p2p_discovery, max_peers=s.max_peers,
                        max_message_bytes=s.max_p2p_message_bytes)
        relay = RelayFilter(self.ledger.network_id)
        switch.add_reactor(AddrReactor(switch))
        votes = VotesReactor(self.ledger, self.commits, switch, relay)
        mempool = MempoolReactor(self.ledger, self.commits, switch, relay, votes.take)
        switch.add_reactor(mempool)
        switch.add_reactor(votes)
        if self.ledger.networked:
            rounds = RoundDriver(self.ledger, self.commits, block_interval=s.block_interval,
                                 timeouts=Timeouts(s.timeout_propose, s.timeout_prevote,
                                                   s.timeout_precommit),
                                 broadcast=switch.broadcast)
            sync = BlockSyncReactor(self.ledger, self.commits, switch, rounds.blocks_fetched)
            self.gossip = ConsensusReactor(self.ledger, self.commits, switch, rounds,
                                           sync.ask_blocks)
            switch.add_reactor(self.gossip)
            switch.add_reactor(sync)
            self.rounds, self.blocksync = rounds, sync
        self.peers, self.mempool, self.votes = switch, mempool, votes

    def _network_metrics(self) -> list[tuple[str, str, str, float | int]]:
        assert self.peers is not None and self.mempool is not None
        assert self.votes is not None and self.ledger is not None
        rows = self.peers.metrics() + self.mempool.metrics() + self.votes.metrics()
        rows.append(("timefast_equivocations_total", "counter",
                     "Equivocation evidence kept (all masternodes)",
                     sum(self.ledger.equivocations.values())))
        r = self.rounds
        if r is not None:
            assert self.blocksync is not None
            info = r.info()
            rows += [
                ("timefast_consensus_height", "gauge", "Height being decided", info["height"]),
                ("timefast_consensus_round", "gauge", "Round of that height", info["round"]),
                ("timefast_blocks_refused_total", "counter",
                 "Blocks refused (proposals not valid, fetched blocks whose commit or "
                 "content failed)", r.refused_blocks + self.blocksync.refused_blocks),
                ("timefast_consensus_equivocations_total", "counter",
                 "Validators seen signing two different votes for one round and step",
                 r.evidence)]
        if self.gossip is not None:
            rows += self.gossip.metrics()
        return rows
    def _start_bus(self) -> None:
        """EVENT_BUS: publish committed events to NATS JetStream for edges."""
        s = self.settings
        if not s.event_bus:
            return
        assert self.ledger is not None
        from timefast.bus import Publisher  # NATS is imported only with EVENT_BUS
        self.bus = Publisher(self.ledger, s.event_bus, s.replay_events)
        self.bus.start()
        log.info("📡 publishing events to %s, stream %s", ",".join(s.event_bus),
                 self.bus.stream)

    def _extra_info(self) -> dict[str, Any]:
        w = self.wallets
        assert w is not None
        return {"connections": w.open_count,
                "subscriptions": w.fanout.index.subscription_count,
                "events_published": w.events_published,
                **({"event_bus": self.bus.info()} if self.bus is not None else {})}

    def _expire(self) -> None:
        assert self.ledger is not None and self.commits is not None

        def done(n: Any, err: BaseException | None) -> None:
            if err is not None:
                log.error("could not expire transactions: %s", err)
            elif n:
                log.info("%d transaction(s) rejected: finality timeout", n)
        self.commits.submit(self.ledger.finality.expire, done)
        self._timers[0] = asyncio.get_running_loop().call_later(EXPIRY_CHECK, self._expire)

    def _release_memory(self) -> None:
        assert self._trim is not None
        self._trim(0)
        self._trim_timer = asyncio.get_running_loop().call_later(TRIM_INTERVAL,
                                                                 self._release_memory)

    def _block(self) -> None:
        assert self.ledger is not None and self.commits is not None
        loop = asyncio.get_running_loop()

        def done(b: Any, err: BaseException | None) -> None:
            if err is not None:
                log.error("could not make a block: %s", err)
                return
            log.info("⛏  block %d %s with %d transaction(s)", b["height"], b["hash"],
                     len(b["txids"]))
            if self._trim is not None:
                # A block turns over thousands of events at once; once its frames
                # are written (the flush is already queued), hand the pages back.
                loop.call_soon(self._trim, 0)
        self.commits.submit(self.ledger.blocks.make_block, done)
        self._timers[1] = loop.call_later(self.settings.block_interval, self._block)

    async def stop(self) -> None:
        """Stop accepting, close wallets with 1001, flush the database."""
        for t in self._timers:
            t.cancel()
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        if self.rpc is not None:
            self.rpc.close()
        if self.rounds is not None:
            self.rounds.close()
        if self.peers is not None:
            await self.peers.stop()
        if self.wallets is not None:
            await self.wallets.shutdown(1001, "going away")
        if self.bus is not None:
            await self.bus.close()
        if self.commits is not None:
            self.commits.close()
        if self.store is not None:
            self.store.close()
        if self.lock is not None:
            self.lock.release()
        self._stopped.set()
        log.info("stopped")

    async def run(self) -> None:
        """Start, then serve until SIGINT or SIGTERM."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        # Before start: its banner tells supervisors (and tests) the node is up, and a
        # SIGTERM that follows at once must stop it cleanly, not kill it.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received: shutting down")
        await self.stop()
