"""The masternode peer protocol (SPEC 7).

``timefast.wire`` parses, serializes, signs and checks every peer message; ``link`` is the
per-link state machine (handshake, sealing, pings, misbehaviour), sans-I/O: it opens
no socket, starts no task and reads no clock; ``relay`` and ``addrbook`` are the
node-wide records of what was relayed and where masternodes listen.
``switch`` runs the links on sockets and hands each message by its type to the
reactor that registered it (``mempool``, ``votes``, ``gossip``, ``blocksync``,
``addrs``); ``rounds`` is the round driver of block consensus.
"""
