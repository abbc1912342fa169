"""The mempool reactor (timefast/p2p/mempool.py): transactions relayed between
masternodes (SPEC 7.3)."""

from __future__ import annotations

import threading

from timefast import crypto, wire
from timefast.transaction import build

from .helpers import new_wallet, rpc
from .p2p_net import fake_peer


def test_conflicting_spends_at_two_nodes_never_both_finalize(four):
    net = four
    key, _, coin = net.fund(0, 5000)
    _, a = new_wallet()
    _, b = new_wallet()
    t1 = build([(coin, 0, key)], [(a, 1000)], timestamp=1)
    t2 = build([(coin, 0, key)], [(b, 2000)], timestamp=2)
    taken = {}

    def send(i, tx):
        taken[tx.txid] = "error" not in rpc(net.nodes[i].rpc_url, "sendrawtransaction",
                                            tx.to_json())
    threads = [threading.Thread(target=send, args=(0, t1)),
               threading.Thread(target=send, args=(1, t2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A node that already locked the coin for the other spend refuses its wallet's
    # (TX_CONFLICT): that one is then known nowhere.
    assert any(taken.values())

    def settled():
        views = [(net.status(i, t1.txid), net.status(i, t2.txid)) for i in range(4)]
        known = all((s is not None) == taken[t.txid]
                    for t, s in zip((t1, t2), views[0], strict=True))
        return views if len(set(views)) == 1 and known else None
    views = net.wait_for(settled, 20, "every node agrees on both")
    s1, s2 = views[0]
    assert (s1, s2) != ("finalized", "finalized")
    assert (s1, s2) in {("finalized", "rejected"), ("rejected", "finalized"),
                        ("pending", "pending"), ("finalized", None), (None, "finalized")}


def test_a_spend_accepted_and_rejected_in_one_commit_is_relayed_all_the_same(tmp_path):
    """A wallet's payment that lost its coin to a conflicting spend within one group
    commit (a loaded node) was acknowledged to the wallet, so the other nodes must
    hear of it too, to store it rejected as this node did.  Relaying only what was
    still pending when the commit was announced left them never knowing it (the
    fault bench found it: one node with the payment unknown, two with it rejected)."""
    from timefast.ledger import Ledger
    from timefast.p2p.mempool import MempoolReactor
    from timefast.p2p.relay import RelayFilter
    from timefast.p2p.switch import Switch
    from timefast.storage import Store

    from .helpers import batch_vote
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led = Ledger(Store(tmp_path / "t.db"), "regtest", keys[0], pubs)
    owner, address = new_wallet()
    coin = led.faucet.pay(address, 5000)
    led.sign_batch()  # its own vote, as the peer layer signs it
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, coin, True))
    assert led.status_of(coin) == "finalized"
    switch = Switch(led, keys[0], listen=None, advertise=None)
    # The reactor watches the ledger's commits from when it is built.
    MempoolReactor(led, None, switch, RelayFilter(led.network_id), lambda p, v: None)  # type: ignore[arg-type]
    sent: list[bytes] = []
    switch.by_key[pubs[1]] = fake_peer(pubs[1], sent)
    mine = build([(coin, 0, owner)], [(new_wallet()[1], 1000)], timestamp=1)
    theirs = build([(coin, 0, owner)], [(new_wallet()[1], 2000)], timestamp=2)
    with led.batch():  # one group commit: accepted, outvoted, rejected
        led.submit(mine.to_json())
        led.submit(theirs.to_json(), relayed=True)
        for k in keys[1:4]:
            led.votes.submit_vote(batch_vote(led, k, theirs.txid, True))
    assert led.status_of(mine.txid) == "rejected"
    relayed = {m.tx.txid for m in map(wire.parse, sent) if isinstance(m, wire.Tx)}
    assert mine.txid in relayed


def test_a_respend_counts_against_a_peer_whose_height_covers_its_confirmation(tmp_path):
    """SPEC 7.3 Budgets: a spend of an output a confirmed transaction spent is refused;
    in a ``Tx`` from a peer whose ``Status`` height is above the confirming block it
    is misbehaviour (an honest node there refuses such a spend), not from a peer
    behind, nor in an answer to this node's ``GetPending``."""
    from types import SimpleNamespace

    from timefast.ledger import Ledger
    from timefast.p2p.mempool import MempoolReactor
    from timefast.p2p.relay import RelayFilter
    from timefast.p2p.switch import Switch
    from timefast.storage import Store

    from .helpers import batch_vote, commit_next
    keys = [crypto.new_key() for _ in range(4)]
    pubs = [crypto.public_key_hex(k) for k in keys]
    led = Ledger(Store(tmp_path / "t.db"), "regtest", keys[0], pubs)
    owner, address = new_wallet()
    coin = led.faucet.pay(address, 5000)
    led.sign_batch()
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, coin, True))
    spend = build([(coin, 0, owner)], [(new_wallet()[1], 1000)], timestamp=1)
    led.submit(spend.to_json())
    led.sign_batch()
    for k in keys[1:3]:
        led.votes.submit_vote(batch_vote(led, k, spend.txid, True))
    confirmed_at = commit_next([led], keys)["height"]

    def submit(fn, done, *_):
        try:
            done(fn(), None)
        except Exception as e:  # handed over, as the group commit does
            done(None, e)
    switch = Switch(led, keys[0], listen=None, advertise=None)
    blamed = []
    switch.penalize = (  # type: ignore[method-assign]
        lambda peer, points, reason: blamed.append((peer, reason)))
    reactor = MempoolReactor(led, SimpleNamespace(submit=submit), switch,  # type: ignore[arg-type]
                             RelayFilter(led.network_id), lambda p, v: None)

    def peer(height):
        p = fake_peer(pubs[1], [])
        p.height = height
        return p
    respends = [build([(coin, 0, owner)], [(new_wallet()[1], 7 + i)], timestamp=3 + i)
                for i in range(4)]
    behind, level, ahead, answering = (peer(confirmed_at - 1), peer(confirmed_at),
                                       peer(confirmed_at + 1), peer(confirmed_at + 5))
    reactor.receive(behind, wire.Tx(respends[0]))
    reactor.receive(level, wire.Tx(respends[1]))  # may be racing its own block's Status
    reactor.peer_up(answering, None)  # type: ignore[arg-type]
    reactor.receive(answering, wire.Pending((respends[2],), ()))
    assert blamed == []
    assert led.status_of(respends[2].txid) == "rejected"  # as at the peer that had it
    reactor.receive(ahead, wire.Tx(respends[3]))
    assert [p for p, _ in blamed] == [ahead]
    assert [led.status_of(t.txid) for t in respends] == [None, None, "rejected", None]
    # An unasked Pending is no answer: its spends are refused, and counted, as in a Tx.
    reactor.receive(answering, wire.Pending((respends[0],), ()))
    assert led.status_of(respends[0].txid) is None
    assert [p for p, _ in blamed] == [ahead, answering]
