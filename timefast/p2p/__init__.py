"""The masternode peer protocol (SPEC 7).

``timefast.wire`` parses, serializes, signs and checks every peer message; ``link`` is the
per-link state machine (handshake, sealing by ``seal``, pings, misbehaviour), sans-I/O:
it opens no socket, starts no task and reads no clock; so are ``budgets`` (what a peer
may ask), ``scores`` (misbehaviour and refusals), and ``relay`` and ``addrbook``, the
node-wide records of what was relayed and where masternodes listen.
``switch`` runs the links on sockets, dials through ``dialer``, and hands each message
by its type to the reactor that registered it (``mempool``, ``votes``, ``gossip``, ``blocksync``,
``addrs``); ``rounds`` is the round driver of block consensus.
"""
