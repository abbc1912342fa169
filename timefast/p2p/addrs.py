"""Where masternodes listen (SPEC 7.2): the ``Addr`` reactor.

This node's own record is signed once it knows the address it advertises, and again
every ``ADDR_REFRESH``; a new peer gets every record held; a record new here goes on
to every other peer, and a key of the voting set learnt from one is dialled (with
``P2P_DISCOVERY``; the switch's dialer keeps one loop per key).  Records of other
keys are kept (bounded) and gossiped, never dialled.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from timefast import wire
from timefast.p2p.addrbook import AddrBook
from timefast.p2p.switch import Peer, Reactor, Switch

ADDR_REFRESH = 3600.0  # seconds between re-signings of this node's Addr
TICK = 1.0  # seconds between checks of the own record's age


class AddrReactor(Reactor):
    """Keeps, relays and signs ``Addr`` records."""

    MESSAGES: ClassVar[tuple[type[wire.Message], ...]] = (wire.Addr,)

    def __init__(self, switch: Switch) -> None:
        self.switch = switch
        self.addrs = AddrBook(switch.network_id, switch.masternodes)
        self._own_addr: wire.Addr | None = None
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sign the own record when the switch knows what it advertises."""
        if self.switch.advertise is not None:
            self._sign_addr()
        self._ticker = asyncio.ensure_future(self._tick())

    def stop(self) -> None:
        """Stop re-signing."""
        if self._ticker is not None:
            self._ticker.cancel()

    def peer_up(self, peer: Peer, hello: wire.Hello) -> None:
        """A new peer gets every record held."""
        for addr in self.addrs.records(time.time()):
            self.switch.send_to(peer, addr)

    def receive(self, peer: Peer, msg: wire.Message) -> None:
        """An ``Addr`` record from a peer."""
        if not isinstance(msg, wire.Addr):
            self.refuse(msg)
            return
        if not self.addrs.offer(msg, time.time(), checked=True):
            return
        self.switch.broadcast(msg, but=peer)
        if msg.public_key in self.switch.masternodes:
            self.switch.discover(msg.listen, msg.public_key)

    def _sign_addr(self) -> None:
        advertise = self.switch.advertise
        assert advertise is not None
        self._own_addr = wire.sign_addr(self.switch.key, self.switch.network_id, advertise,
                                        int(time.time()))
        self.addrs.offer(self._own_addr, time.time(), checked=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            if (self._own_addr is not None
                    and time.time() - self._own_addr.timestamp > ADDR_REFRESH):
                self._sign_addr()
                self.switch.broadcast(self._own_addr)
