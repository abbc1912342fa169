# The UTXO table of the compiled core (SPEC 4): outpoint -> record, moved only
# along the transition table of SPEC 4.2.  Included by _core.pyx; its C
# declarations are in _core_utxo.pxd, the records' C++ in _core_utxo.h.

from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.string cimport memcpy
from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_DATA, PyUnicode_1BYTE_KIND, PyUnicode_New

from timefast.errors import (
    DuplicateOutpoint,
    IllegalTransition,
    LockConflict,
    UnknownOutpoint,
)

# ---------------------------------------------------------------------------
# UTXO states (their numbers: _core_utxo.pxd) and the transition table (SPEC 4.2)
# ---------------------------------------------------------------------------

STATES = ("Unspent", "Locked", "SpentPending", "SpentFinalized", "Confirmed")
cdef tuple _STATE_NAMES = STATES
cdef dict _STATE_IDS = {name: i for i, name in enumerate(STATES)}

# _ALLOWED[from][to]: the only moves a UTXO may make.  Everything else is refused.
cdef bint _ALLOWED[5][5]
_ALLOWED[UNSPENT][LOCKED] = True
_ALLOWED[LOCKED][SPENT_PENDING] = True
_ALLOWED[LOCKED][UNSPENT] = True
_ALLOWED[SPENT_PENDING][SPENT_PENDING] = True
_ALLOWED[SPENT_PENDING][SPENT_FINALIZED] = True
_ALLOWED[SPENT_PENDING][UNSPENT] = True
_ALLOWED[SPENT_FINALIZED][CONFIRMED] = True
# What a node learns from peers (SPEC 4.2): a transaction known with its quorum, or
# from a committed block, spends an Unspent coin at once, or one that a conflicting
# local transaction had locked (that one lost).
_ALLOWED[UNSPENT][SPENT_FINALIZED] = True
_ALLOWED[LOCKED][SPENT_FINALIZED] = True


cdef inline int _state_id(str name) except -1:
    cdef object i = _STATE_IDS.get(name)
    if i is None:
        raise ValueError(f"unknown UTXO state {name!r}")
    return <int>i


def allowed(str from_state, str to_state):
    """Whether the transition table permits ``from_state -> to_state``."""
    return bool(_ALLOWED[_state_id(from_state)][_state_id(to_state)])


# ---------------------------------------------------------------------------
# txids in C: 64 lowercase hex characters <-> 32 bytes
# ---------------------------------------------------------------------------

cdef signed char _HEX_VALUE[256]
cdef int _c
for _c in range(256):
    _HEX_VALUE[_c] = -1
for _c in range(10):
    _HEX_VALUE[48 + _c] = _c
for _c in range(6):
    _HEX_VALUE[97 + _c] = 10 + _c
cdef const char* _HEX_DIGITS = b"0123456789abcdef"


cdef inline bint _parse_txid(str txid, uint8_t* out) noexcept:
    # False unless ``txid`` is exactly 64 lowercase hex characters (the only form
    # a txid has: SPEC 4.1).
    cdef Py_ssize_t i
    cdef const uint8_t* p
    cdef signed char hi, lo
    if PyUnicode_GET_LENGTH(txid) != 64 or PyUnicode_KIND(txid) != PyUnicode_1BYTE_KIND:
        return False
    p = <const uint8_t*>PyUnicode_DATA(txid)
    for i in range(32):
        hi = _HEX_VALUE[p[2 * i]]
        lo = _HEX_VALUE[p[2 * i + 1]]
        if hi < 0 or lo < 0:
            return False
        out[i] = <uint8_t>((hi << 4) | lo)
    return True


cdef inline str _txid_str(const uint8_t* raw):
    cdef str s = PyUnicode_New(64, 127)
    cdef uint8_t* p = <uint8_t*>PyUnicode_DATA(s)
    cdef Py_ssize_t i
    for i in range(32):
        p[2 * i] = _HEX_DIGITS[raw[i] >> 4]
        p[2 * i + 1] = _HEX_DIGITS[raw[i] & 15]
    return s


cdef inline object _spender(tf_entry* e):
    return _txid_str(e.second.spender) if e.second.has_spender else None


cdef inline bint _key(str txid, long vout, tf_outkey* k) noexcept:
    # False when no outpoint can have this name.
    if vout < 0 or vout > 0xFFFFFFFF:
        return False
    k.vout = <uint32_t>vout
    return _parse_txid(txid, <uint8_t*>k.w)


cdef inline tf_entry* _next_coin(_CoinWalk* w, bint unspent_only) noexcept:
    # The walk's next coin, or NULL at the end: coins gone from the list (NULL
    # entries) are skipped, and all but Unspent ones when ``unspent_only``.
    # Inlined with a constant ``unspent_only``, the test costs nothing per coin.
    cdef tf_entry* e
    if w.i >= w.n:
        return NULL                             # at the end, or no coin (lst NULL)
    # Read the list's storage afresh at each call: the caller makes Python objects
    # between calls, and nothing here does.
    cdef tf_entry** coins = w.lst.data()
    while w.i < w.n:
        e = coins[w.i]
        w.i += 1
        if e != NULL and (not unspent_only or e.second.state == UNSPENT):
            return e
    return NULL


cdef class UtxoTable:
    """Outpoint ``(txid, vout)`` -> UTXO record, moved only along SPEC 4.2.

    Records are C structs keyed by the txid's 32 bytes, so a txid must be 64
    lowercase hex characters: ``add`` and ``lock`` refuse any other with
    ``ValueError``, and lookups treat it as unknown.  ``get`` returns ``(address,
    amount, state, spending_txid, votes, block_height)`` with ``block_height`` None
    when unset.
    """

    def __cinit__(self):
        self._rows = {}
        self._row_address = []

    def __len__(self):
        return self._coins.size()

    def __contains__(self, outpoint):
        cdef tf_outkey k
        if type(outpoint) is not tuple or len(<tuple>outpoint) != 2:
            return False
        txid, vout = outpoint
        if type(txid) is not str or type(vout) is not int:
            return False
        return _key(txid, vout, &k) and tf_find(self._coins, k) != NULL

    cdef tf_entry* _find(self, str txid, long vout) except NULL:
        cdef tf_outkey k
        cdef tf_entry* e = NULL
        if _key(txid, vout, &k):
            e = tf_find(self._coins, k)
        if e == NULL:
            raise UnknownOutpoint(txid, vout)
        return e

    cdef uint32_t _row_for(self, str address) except? 0xFFFFFFFF:
        cdef uint32_t row
        r = self._rows.get(address)
        if r is not None:
            return <uint32_t>r
        if self._free_rows.empty():
            row = <uint32_t>self._row_coins.size()
            self._row_coins.resize(row + 1)
            self._row_dead.push_back(0)
            self._row_address.append(address)
        else:
            row = self._free_rows.back()
            self._free_rows.pop_back()
            self._row_address[row] = address
        self._rows[address] = row
        return row

    cdef void _unlink(self, tf_entry* e) noexcept:
        # Take a coin out of its address's list, which keeps the order of the
        # others: its place becomes NULL and the list is compacted once half of
        # it is NULLs, so removal is O(1) amortized however many coins the
        # address holds.  An address left with no coin gives its row back.
        cdef uint32_t row = e.second.row
        cdef tf_entry_list* lst = &self._row_coins[row]
        cdef size_t i, j = 0
        lst[0][e.second.pos] = NULL
        self._row_dead[row] += 1
        if self._row_dead[row] == lst.size():
            lst.clear()
            lst.shrink_to_fit()
            self._row_dead[row] = 0
            address = self._row_address[row]
            del self._rows[address]
            self._row_address[row] = None
            self._free_rows.push_back(row)
            return
        if self._row_dead[row] * 2 > lst.size():
            for i in range(lst.size()):
                if lst[0][i] != NULL:
                    lst[0][j] = lst[0][i]
                    lst[0][j].second.pos = <uint32_t>j
                    j += 1
            lst.resize(j)
            lst.shrink_to_fit()
            self._row_dead[row] = 0

    def add(self, str txid, long vout, str address, int64_t amount, str state="Unspent",
            spending_txid=None, int votes=0, block_height=None):
        """Insert a UTXO (new outputs are Unspent; other states restore from disk)."""
        cdef tf_outkey k
        cdef uint8_t spender[32]
        if not _key(txid, vout, &k):
            raise ValueError(f"outpoint {txid!r}:{vout} is not a 64-hex txid and a vout")
        if tf_find(self._coins, k) != NULL:
            raise DuplicateOutpoint(txid, vout)
        if amount <= 0:
            raise ValueError("amount must be positive")
        cdef int st = _state_id(state)
        if spending_txid is not None and (type(spending_txid) is not str
                                          or not _parse_txid(spending_txid, spender)):
            raise ValueError(f"spending txid {spending_txid!r} is not 64 hex characters")
        cdef uint32_t row = self._row_for(address)
        cdef tf_entry* e = tf_insert(self._coins, k)
        e.second.amount = amount
        e.second.block_height = -1 if block_height is None else block_height
        e.second.votes = votes
        e.second.state = <uint8_t>st
        e.second.has_spender = spending_txid is not None
        if e.second.has_spender:
            memcpy(e.second.spender, spender, 32)
        e.second.row = row
        e.second.pos = <uint32_t>self._row_coins[row].size()
        self._row_coins[row].push_back(e)

    def get(self, str txid, long vout):
        """The record of one outpoint; raises ``UnknownOutpoint``."""
        cdef tf_entry* e = self._find(txid, vout)
        return (self._row_address[e.second.row], e.second.amount,
                _STATE_NAMES[e.second.state], _spender(e), e.second.votes,
                None if e.second.block_height < 0 else e.second.block_height)

    def state(self, str txid, long vout):
        """The state name of one outpoint; raises ``UnknownOutpoint``."""
        return _STATE_NAMES[self._find(txid, vout).second.state]

    cpdef int check_lock(self, str txid, list outpoints) except -1:
        """Raise what ``lock`` would raise, changing nothing."""
        cdef set seen = set()
        cdef tf_entry* e
        cdef uint8_t spender[32]
        if not _parse_txid(txid, spender):
            raise ValueError(f"spending txid {txid!r} is not 64 hex characters")
        for op in outpoints:
            if op in seen:
                raise DuplicateOutpoint(op[0], op[1])
            seen.add(op)
            e = self._find(op[0], op[1])
            if e.second.state != UNSPENT:
                raise LockConflict(op[0], op[1], _STATE_NAMES[e.second.state],
                                   _spender(e))
        return 0

    cpdef int lock(self, str txid, list outpoints) except -1:
        """Lock every outpoint for ``txid`` or none: the first transaction wins.

        A loser gets ``LockConflict`` naming the input that is taken, its state and
        the transaction holding it.
        """
        cdef tf_entry* e
        cdef uint8_t spender[32]
        self.check_lock(txid, outpoints)
        _parse_txid(txid, spender)
        for op in outpoints:
            e = self._find(op[0], op[1])
            e.second.state = LOCKED
            e.second.has_spender = True
            memcpy(e.second.spender, spender, 32)
        return 0

    def check(self, str txid, long vout, str new_state):
        """Raise what ``transition`` would raise, changing nothing."""
        cdef tf_entry* e = self._find(txid, vout)
        cdef int to = _state_id(new_state)
        if not _ALLOWED[e.second.state][to]:
            raise IllegalTransition(txid, vout, _STATE_NAMES[e.second.state], new_state)

    def transition(self, str txid, long vout, str new_state, votes=None, block_height=None,
                   spending_txid=None):
        """Move one outpoint; returns the previous state name.

        Going back to Unspent (a rejected spend) clears the spending txid and votes;
        ``spending_txid`` names the transaction that spends it from now on (one
        learnt from peers that won over the local one, or the coin's first spender).
        """
        cdef tf_entry* e = self._find(txid, vout)
        cdef int to = _state_id(new_state)
        cdef int prev = e.second.state
        cdef uint8_t spender[32]
        if not _ALLOWED[prev][to]:
            raise IllegalTransition(txid, vout, _STATE_NAMES[prev], new_state)
        if spending_txid is not None:
            if not isinstance(spending_txid, str) or not _parse_txid(spending_txid, spender):
                raise ValueError("spending_txid must be 64 lowercase hex characters")
            memcpy(e.second.spender, spender, 32)
            e.second.has_spender = True
        cdef int new_votes = e.second.votes if votes is None else votes
        cdef int64_t new_height = e.second.block_height if block_height is None else block_height
        e.second.state = <uint8_t>to
        if to == UNSPENT:
            e.second.has_spender = False
            e.second.votes = 0
        if votes is not None:
            e.second.votes = new_votes
        if block_height is not None:
            e.second.block_height = new_height
        return _STATE_NAMES[prev]

    def forget(self, str txid, long vout):
        """Drop a Confirmed UTXO from memory.

        Confirmed is the end of a coin's life (its spend is in a block) and it never
        moves again, so the node keeps it on disk only: memory then holds the live
        set, not the whole history.  Any other state raises ``IllegalTransition``.
        """
        cdef tf_entry* e = self._find(txid, vout)
        if e.second.state != CONFIRMED:
            raise IllegalTransition(txid, vout, _STATE_NAMES[e.second.state], "forgotten")
        cdef tf_outkey k = e.first
        self._unlink(e)
        self._coins.erase(k)

    cdef inline _CoinWalk _walk(self, str address) except *:
        # The walk over ``address``'s coins that by_address, unspent and balance
        # step through with _next_coin.
        cdef _CoinWalk w
        w.lst = NULL
        w.i = 0
        w.n = 0
        r = self._rows.get(address)
        if r is not None:
            w.lst = &self._row_coins[<uint32_t>r]
            w.n = w.lst.size()
        return w

    def by_address(self, str address):
        """Outpoints owned by ``address``, oldest first."""
        cdef _CoinWalk w = self._walk(address)
        cdef tf_entry* e
        out = []
        while (e := _next_coin(&w, False)) != NULL:
            out.append((_txid_str(<const uint8_t*>e.first.w), e.first.vout))
        return out

    def unspent(self, str address):
        """``(txid, vout, amount)`` of ``address``'s Unspent UTXOs, oldest first.

        Only those become Python objects: an address may hold thousands of coins
        on their way out (spent, not yet in a block).
        """
        cdef _CoinWalk w = self._walk(address)
        cdef tf_entry* e
        out = []
        while (e := _next_coin(&w, True)) != NULL:
            out.append((_txid_str(<const uint8_t*>e.first.w), e.first.vout, e.second.amount))
        return out

    def balance(self, str address):
        """Sum of the amounts of ``address``'s Unspent UTXOs."""
        cdef _CoinWalk w = self._walk(address)
        cdef tf_entry* e
        cdef int64_t total = 0
        while (e := _next_coin(&w, True)) != NULL:
            total += e.second.amount
        return total
