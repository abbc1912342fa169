"""The masternode peer protocol (SPEC 7), sans-I/O.

``timefast.wire`` parses, serializes, signs and checks every peer message; ``link`` is the
per-link state machine (handshake, pings, misbehaviour) and the node-wide relay and
address records. Neither module opens a socket, starts a task or reads a clock: the
caller feeds them frames and ``now`` values and acts on what they return.
"""
