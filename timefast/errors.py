"""Exceptions shared across layers: the compiled core's (and its plain-Python
model's), and the refusal of a request with one of SPEC 3.4's error codes.

They live in a plain module so that the core, the ledger, the ports and the test
model all raise and catch the very same classes.
"""

from __future__ import annotations


class CoreError(Exception):
    """Base class of every error the core raises."""


class UnknownOutpoint(CoreError, LookupError):
    """An outpoint that the UTXO table does not hold."""

    def __init__(self, txid: str, vout: int) -> None:
        super().__init__(f"unknown outpoint {txid}:{vout}")
        self.txid = txid
        self.vout = vout


class DuplicateOutpoint(CoreError):
    """An outpoint added twice, or named twice in one lock."""

    def __init__(self, txid: str, vout: int) -> None:
        super().__init__(f"duplicate outpoint {txid}:{vout}")
        self.txid = txid
        self.vout = vout


class IllegalTransition(CoreError):
    """A state move that the transition table (SPEC 4.2) refuses."""

    def __init__(self, txid: str, vout: int, from_state: str, to_state: str) -> None:
        super().__init__(f"illegal transition {from_state} -> {to_state} for {txid}:{vout}")
        self.txid = txid
        self.vout = vout
        self.from_state = from_state
        self.to_state = to_state


class LockConflict(CoreError):
    """A lock refused because one input is not Unspent (first seen wins)."""

    def __init__(self, txid: str, vout: int, state: str, spending_txid: str | None) -> None:
        super().__init__(
            f"outpoint {txid}:{vout} is {state}"
            + (f" (spent by {spending_txid})" if spending_txid else "")
        )
        self.txid = txid
        self.vout = vout
        self.state = state
        self.spending_txid = spending_txid


class RequestError(Exception):
    """A request refused with one of SPEC 3.4's error codes (``code``), by the ledger
    (``rules.LedgerError``) or by the wallet session: answered with an ``Error`` (or a
    JSON-RPC error), never closing the connection."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
