# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""The compiled hot path of timefast (SPEC 1).

* ``UtxoTable``: outpoint -> record, with the UTXO transition table of SPEC 4.2 as a
  static C table and an all-or-nothing lock of a transaction's inputs.
* ``SubscriberIndex``: address -> subscribers and subscriber -> addresses, held in C
  vectors; ``route`` yields each subscriber once however many addresses it holds.
* ``Fanout``: one output buffer per connection in C memory.  An event's frame is
  built once; ``publish`` copies the same bytes into every target's buffer and
  ``flush`` writes each dirty buffer once per loop turn, straight to the socket
  with ``send()`` where it can.  No Python object is made per recipient.

Nothing here imports asyncio, JSON or logging (rule 1 of DEVELOPERS).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memmove
from libcpp.vector cimport vector
from libcpp.unordered_set cimport unordered_set
from cpython cimport array
from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_AsUnsignedLong
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_SIZE, PySequence_Fast_ITEMS
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_DATA, PyUnicode_1BYTE_KIND, PyUnicode_New

from timefast._sys cimport c_send, MSG_NOSIGNAL, MSG_DONTWAIT, errno, EAGAIN, EWOULDBLOCK, EINTR

from timefast.errors import (
    DuplicateOutpoint,
    IllegalTransition,
    LockConflict,
    UnknownOutpoint,
)

# ---------------------------------------------------------------------------
# UTXO states and the transition table (SPEC 4.2)
# ---------------------------------------------------------------------------

cdef enum:
    UNSPENT = 0
    LOCKED = 1
    SPENT_PENDING = 2
    SPENT_FINALIZED = 3
    CONFIRMED = 4
    N_STATES = 5

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

    def transition(self, str txid, long vout, str new_state, votes=None, block_height=None):
        """Move one outpoint; returns the previous state name.

        Going back to Unspent (a rejected spend) clears the spending txid and votes.
        """
        cdef tf_entry* e = self._find(txid, vout)
        cdef int to = _state_id(new_state)
        cdef int prev = e.second.state
        if not _ALLOWED[prev][to]:
            raise IllegalTransition(txid, vout, _STATE_NAMES[prev], new_state)
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

    cdef tf_entry_list* _coins_of(self, str address) except? NULL:
        # The address's coin list (NULL entries: coins gone), or NULL for none.
        r = self._rows.get(address)
        if r is None:
            return NULL
        return &self._row_coins[<uint32_t>r]

    def by_address(self, str address):
        """Outpoints owned by ``address``, oldest first."""
        cdef tf_entry_list* lst = self._coins_of(address)
        cdef size_t i
        cdef tf_entry* e
        out = []
        if lst == NULL:
            return out
        for i in range(lst.size()):
            e = lst[0][i]
            if e != NULL:
                out.append((_txid_str(<const uint8_t*>e.first.w), e.first.vout))
        return out

    def unspent(self, str address):
        """``(txid, vout, amount)`` of ``address``'s Unspent UTXOs, oldest first.

        Only those become Python objects: an address may hold thousands of coins
        on their way out (spent, not yet in a block).
        """
        cdef tf_entry_list* lst = self._coins_of(address)
        cdef size_t i
        cdef tf_entry* e
        out = []
        if lst == NULL:
            return out
        for i in range(lst.size()):
            e = lst[0][i]
            if e != NULL and e.second.state == UNSPENT:
                out.append((_txid_str(<const uint8_t*>e.first.w), e.first.vout,
                            e.second.amount))
        return out

    def balance(self, str address):
        """Sum of the amounts of ``address``'s Unspent UTXOs."""
        cdef tf_entry_list* lst = self._coins_of(address)
        cdef size_t i
        cdef tf_entry* e
        cdef int64_t total = 0
        if lst == NULL:
            return 0
        for i in range(lst.size()):
            e = lst[0][i]
            if e != NULL and e.second.state == UNSPENT:
                total += e.second.amount
        return total


# ---------------------------------------------------------------------------
# Signature checks in bulk, without the GIL
# ---------------------------------------------------------------------------

ctypedef int (*_verify_fn)(const unsigned char* sig, const unsigned char* m,
                           unsigned long long mlen, const unsigned char* pk) noexcept nogil


def verify_many(size_t fn, list items):
    """ed25519 checks of ``items`` (``(public key, message, signature)`` bytes).

    ``fn`` is the address of libsodium's ``crypto_sign_verify_detached``.  The GIL
    is released once for the whole list, so a thread can check a batch while the
    event loop goes on.  Returns one byte per item: 1 when its signature is good
    (a key that is not 32 bytes or a signature that is not 64 is not).
    """
    cdef Py_ssize_t n = len(items), i
    cdef vector[const unsigned char*] pks, msgs, sigs
    cdef vector[unsigned long long] lens
    cdef _verify_fn f = <_verify_fn>fn
    out = bytearray(n)
    cdef unsigned char* o = out
    pks.resize(n)
    msgs.resize(n)
    sigs.resize(n)
    lens.resize(n)
    for i in range(n):
        pk, m, sig = <tuple>items[i]
        if (type(pk) is not bytes or type(m) is not bytes or type(sig) is not bytes
                or PyBytes_GET_SIZE(pk) != 32 or PyBytes_GET_SIZE(sig) != 64):
            pks[i] = NULL
            continue
        pks[i] = <const unsigned char*>PyBytes_AS_STRING(pk)
        sigs[i] = <const unsigned char*>PyBytes_AS_STRING(sig)
        msgs[i] = <const unsigned char*>PyBytes_AS_STRING(m)
        lens[i] = <unsigned long long>PyBytes_GET_SIZE(m)
    # ``items`` holds every bytes object pointed at until this returns.
    with nogil:
        for i in range(n):
            if pks[i] != NULL:
                o[i] = f(sigs[i], msgs[i], lens[i], pks[i]) == 0
    return bytes(out)


# ---------------------------------------------------------------------------
# Subscriber index

import array as _array_module

cdef array.array _UINT32_ARRAY = _array_module.array("I")
# ---------------------------------------------------------------------------

cdef inline void _swap_remove(vector[uint32_t]& v, uint32_t value) noexcept:
    cdef size_t i, n = v.size()
    for i in range(n):
        if v[i] == value:
            v[i] = v[n - 1]
            v.pop_back()
            return


cdef class SubscriberIndex:
    """Address -> subscribers and subscriber -> addresses.

    Subscribers are small non-negative integers chosen by the caller (the fan-out
    uses its connection slots).  Invariant: ``(row, sub)`` is in ``_pairs`` exactly
    when ``sub`` is in ``_subs_of_row[row]`` and ``row`` is in ``_rows_of_sub[sub]``;
    a row with no subscriber is released, so memory follows live subscriptions.
    """

    def __cinit__(self):
        self._rows = {}
        self._row_address = []
        self._generation = 0
        self._subscriber_count = 0

    cdef void _ensure_sub(self, uint32_t sub) noexcept:
        if sub >= self._rows_of_sub.size():
            self._rows_of_sub.resize(sub + 1)
            self._stamp.resize(sub + 1, 0)

    def subscribe(self, uint32_t sub, addresses):
        """Add addresses to a subscriber; returns how many were new to it."""
        cdef uint32_t row
        cdef uint64_t pair
        cdef int added = 0
        self._ensure_sub(sub)
        cdef bint was_empty = self._rows_of_sub[sub].empty()
        for address in addresses:
            r = self._rows.get(address)
            if r is None:
                if not isinstance(address, str):
                    raise TypeError("addresses must be str")
                if self._free_rows.empty():
                    row = <uint32_t>self._subs_of_row.size()
                    self._subs_of_row.resize(row + 1)
                    self._row_address.append(address)
                else:
                    row = self._free_rows.back()
                    self._free_rows.pop_back()
                    self._row_address[row] = address
                self._rows[address] = row
            else:
                row = <uint32_t>r
            pair = (<uint64_t>row << 32) | sub
            if self._pairs.count(pair):
                continue
            self._pairs.insert(pair)
            self._subs_of_row[row].push_back(sub)
            self._rows_of_sub[sub].push_back(row)
            added += 1
        if was_empty and added:
            self._subscriber_count += 1
        return added

    cdef void _remove_from_row(self, uint32_t row, uint32_t sub) noexcept:
        _swap_remove(self._subs_of_row[row], sub)

    cdef void _release_row(self, uint32_t row):
        # The row's vector is emptied and its capacity returned, so a million
        # subscribe/drop cycles leave memory where it started.
        vector[uint32_t]().swap(self._subs_of_row[row])
        address = self._row_address[row]
        del self._rows[address]
        self._row_address[row] = None
        self._free_rows.push_back(row)

    def unsubscribe(self, uint32_t sub, addresses):
        """Remove addresses from a subscriber; returns how many it held."""
        cdef uint32_t row
        cdef uint64_t pair
        cdef int removed = 0
        if sub >= self._rows_of_sub.size() or self._rows_of_sub[sub].empty():
            return 0
        for address in addresses:
            r = self._rows.get(address)
            if r is None:
                continue
            row = <uint32_t>r
            pair = (<uint64_t>row << 32) | sub
            if not self._pairs.erase(pair):
                continue
            self._remove_from_row(row, sub)
            _swap_remove(self._rows_of_sub[sub], row)
            if self._subs_of_row[row].empty():
                self._release_row(row)
            removed += 1
        if removed and self._rows_of_sub[sub].empty():
            self._subscriber_count -= 1
            vector[uint32_t]().swap(self._rows_of_sub[sub])
        return removed

    def drop(self, uint32_t sub):
        """Remove a subscriber and all its addresses; returns how many it held."""
        if sub >= self._rows_of_sub.size():
            return 0
        cdef size_t i, n = self._rows_of_sub[sub].size()
        cdef uint32_t row
        for i in range(n):
            row = self._rows_of_sub[sub][i]
            self._pairs.erase((<uint64_t>row << 32) | sub)
            self._remove_from_row(row, sub)
            if self._subs_of_row[row].empty():
                self._release_row(row)
        vector[uint32_t]().swap(self._rows_of_sub[sub])
        if n:
            self._subscriber_count -= 1
        return n

    cdef int _route_into(self, object addresses, vector[uint32_t]* out) except -1:
        # Each subscriber is stamped with this route's generation when first met,
        # so it is appended once however many of the addresses it holds.
        cdef uint32_t row, sub
        cdef size_t i, n
        cdef Py_ssize_t k, count
        cdef PyObject* r
        cdef PyObject** items
        self._generation += 1
        cdef uint64_t gen = self._generation
        out.clear()
        # A list or tuple is walked as a C array, and each lookup borrows the row
        # number from the dict: no reference counting in this loop.
        seq = PySequence_Fast(addresses, "addresses must be iterable")
        count = PySequence_Fast_GET_SIZE(seq)
        items = PySequence_Fast_ITEMS(seq)
        for k in range(count):
            r = PyDict_GetItem(self._rows, <object>items[k])
            if r == NULL:
                continue
            row = <uint32_t>PyLong_AsUnsignedLong(<object>r)
            n = self._subs_of_row[row].size()
            for i in range(n):
                sub = self._subs_of_row[row][i]
                if self._stamp[sub] != gen:
                    self._stamp[sub] = gen
                    out.push_back(sub)
        return 0

    def route(self, addresses):
        """Subscribers of any of ``addresses``, each once, in first-met order.

        Returned as one ``array('I')`` (a single object, however many subscribers).
        """
        cdef vector[uint32_t] out
        self._route_into(addresses, &out)
        cdef array.array result = array.clone(_UINT32_ARRAY, out.size(), False)
        if out.size():
            memcpy(result.data.as_voidptr, out.data(), out.size() * sizeof(uint32_t))
        return result

    def route_count(self, addresses):
        """How many subscribers ``route`` would return, without building the list."""
        cdef vector[uint32_t] out
        self._route_into(addresses, &out)
        return out.size()

    def addresses_of(self, uint32_t sub):
        """The addresses a subscriber holds."""
        if sub >= self._rows_of_sub.size():
            return []
        return [self._row_address[r] for r in self._rows_of_sub[sub]]

    def subscribers_of(self, str address):
        """The subscribers of one address."""
        r = self._rows.get(address)
        if r is None:
            return []
        return [s for s in self._subs_of_row[<uint32_t>r]]

    def holds(self, uint32_t sub, str address):
        """Whether ``sub`` is subscribed to ``address``."""
        r = self._rows.get(address)
        if r is None:
            return False
        return bool(self._pairs.count((<uint64_t><uint32_t>r << 32) | sub))

    def count_of(self, uint32_t sub):
        """How many addresses one subscriber holds."""
        if sub >= self._rows_of_sub.size():
            return 0
        return self._rows_of_sub[sub].size()

    @property
    def address_count(self):
        """Addresses with at least one subscriber."""
        return len(self._rows)

    @property
    def subscriber_count(self):
        """Subscribers holding at least one address."""
        return self._subscriber_count

    @property
    def subscription_count(self):
        """(address, subscriber) pairs."""
        return self._pairs.size()


# ---------------------------------------------------------------------------
# Frames and fan-out
# ---------------------------------------------------------------------------

def frame_text(bytes payload):
    """One unmasked WebSocket text frame (server to client, FIN set)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t head = 2 if n < 126 else (4 if n < 65536 else 10)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, head + n)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    cdef int i
    p[0] = 0x81
    if n < 126:
        p[1] = <uint8_t>n
    elif n < 65536:
        p[1] = 126
        p[2] = <uint8_t>(n >> 8)
        p[3] = <uint8_t>(n & 0xff)
    else:
        p[1] = 127
        for i in range(8):
            p[2 + i] = <uint8_t>((<uint64_t>n >> (8 * (7 - i))) & 0xff)
    memcpy(p + head, PyBytes_AS_STRING(payload), n)
    return out


cdef enum:
    _MIN_CAPACITY = 512
    _KEEP_CAPACITY = 4096  # a buffer larger than this is freed once written


cdef class Fanout:
    """Per-connection output buffers in C memory, filled once per event.

    A connection is a *slot*.  ``open`` takes a writer (an asyncio transport:
    ``write``, ``get_write_buffer_size``, ``is_closing``) and, when the socket may be
    written directly, its file descriptor.  ``send``,
    ``publish`` and ``broadcast`` append frame bytes to buffers; ``flush`` writes
    each dirty buffer once.  A buffer that would pass ``limit`` bytes marks its
    connection lagged: its bytes are dropped, it takes no more, and ``take_lagged``
    hands it to the caller to close.  ``last_seq_flushed`` is the highest event
    sequence number that reached the kernel or the transport, which is where a
    lagged client resumes from.
    """

    def __cinit__(self, Py_ssize_t limit=1048576):
        self.index = SubscriberIndex()
        self._bufs = NULL
        self._nbufs = 0
        self._writers = []
        self._limit = limit
        self._open_count = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._bufs != NULL:
            for i in range(self._nbufs):
                free(self._bufs[i].data)
            free(self._bufs)

    @property
    def limit(self):
        """Bytes one connection may have queued before it is lagged."""
        return self._limit

    @property
    def connections(self):
        """Open slots."""
        return self._open_count

    @property
    def buffer_bytes(self):
        """C memory the slots' output buffers hold (their capacity, used or not)."""
        cdef size_t i
        cdef Py_ssize_t total = 0
        for i in range(self._nbufs):
            total += self._bufs[i].capacity
        return total

    def open(self, writer, int fd=-1):
        """Register a connection; returns its slot."""
        cdef uint32_t slot
        cdef OutBuf* nb
        if not self._free_slots.empty():
            slot = self._free_slots.back()
            self._free_slots.pop_back()
            self._writers[slot] = writer
        else:
            slot = <uint32_t>self._nbufs
            nb = <OutBuf*>realloc(self._bufs, (self._nbufs + 1) * sizeof(OutBuf))
            if nb == NULL:
                raise MemoryError()
            self._bufs = nb
            self._nbufs += 1
            self._writers.append(writer)
        cdef OutBuf* b = &self._bufs[slot]
        b.data = NULL
        b.length = 0
        b.capacity = 0
        b.fd = fd
        b.active = True
        b.live = False
        b.paused = False
        b.lagged = False
        b.dirty = False
        b.spilled = False
        b.last_seq_queued = -1
        b.last_seq_flushed = -1
        self._open_count += 1
        return slot

    def close(self, uint32_t slot):
        """Forget a connection: its subscriptions and unsent bytes go."""
        if slot >= self._nbufs or not self._bufs[slot].active:
            return
        cdef OutBuf* b = &self._bufs[slot]
        self.index.drop(slot)
        free(b.data)
        b.data = NULL
        b.length = 0
        b.capacity = 0
        b.active = False
        b.live = False
        self._writers[slot] = None
        self._free_slots.push_back(slot)
        self._open_count -= 1

    def set_fd(self, uint32_t slot, int fd):
        """Write this slot with ``send()`` on ``fd`` (-1: through the writer)."""
        self._bufs[slot].fd = fd

    cdef bint _append(self, uint32_t slot, const char* data, Py_ssize_t n, int64_t seq) noexcept:
        # Returns False when the slot takes no bytes (closed or lagged).
        cdef OutBuf* b = &self._bufs[slot]
        cdef Py_ssize_t need, cap
        cdef char* nd
        if not b.active or b.lagged:
            return False
        need = b.length + n
        if need > self._limit:
            b.lagged = True
            free(b.data)
            b.data = NULL
            b.length = 0
            b.capacity = 0
            self._lagged.push_back(slot)
            self.lag_closes += 1
            return False
        if need > b.capacity:
            cap = b.capacity * 2 if b.capacity else _MIN_CAPACITY
            while cap < need:
                cap *= 2
            nd = <char*>realloc(b.data, cap)
            if nd == NULL:
                return False
            b.data = nd
            b.capacity = cap
        memcpy(b.data + b.length, data, n)
        b.length = need
        if seq >= 0:
            b.last_seq_queued = seq
        if not b.dirty:
            b.dirty = True
            self._dirty.push_back(slot)
        self.frames_queued += 1
        return True

    def send(self, uint32_t slot, bytes data, int64_t seq=-1):
        """Queue bytes for one connection; False if it takes no more."""
        if slot >= self._nbufs:
            return False
        return self._append(slot, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), seq)

    def publish(self, bytes frame, addresses, int64_t seq=-1):
        """Queue one frame for every subscriber of any of ``addresses``, once each.

        Returns the number of connections that took it.
        """
        cdef const char* p = PyBytes_AS_STRING(frame)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        cdef size_t i
        cdef int taken = 0
        self.index._route_into(addresses, &self._targets)
        for i in range(self._targets.size()):
            if self._targets[i] < <uint32_t>self._nbufs:
                taken += self._append(self._targets[i], p, n, seq)
        return taken

    def set_live(self, uint32_t slot):
        """The connection has finished its handshake: broadcasts now reach it."""
        if slot < self._nbufs and self._bufs[slot].active:
            self._bufs[slot].live = True

    def broadcast(self, bytes frame, int64_t seq=-1):
        """Queue one frame for every live connection; returns how many took it."""
        cdef const char* p = PyBytes_AS_STRING(frame)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        cdef Py_ssize_t i
        cdef int taken = 0
        for i in range(self._nbufs):
            if self._bufs[i].live:
                taken += self._append(<uint32_t>i, p, n, seq)
        return taken

    def pause(self, uint32_t slot):
        """Stop writing a slot (its transport is above its high-water mark)."""
        if slot < self._nbufs:
            self._bufs[slot].paused = True

    def resume(self, uint32_t slot):
        """Writing may go on; queued bytes go out at the next flush."""
        if slot >= self._nbufs:
            return
        cdef OutBuf* b = &self._bufs[slot]
        b.paused = False
        if b.active and b.length and not b.dirty:
            b.dirty = True
            self._dirty.push_back(slot)

    cdef int _flush_one(self, uint32_t slot) except -1:
        cdef OutBuf* b = &self._bufs[slot]
        cdef Py_ssize_t sent = 0, n
        cdef object writer = self._writers[slot]
        if b.spilled:
            # The transport still holds bytes of an earlier partial write: ours
            # must queue behind them until it has drained.
            if writer.get_write_buffer_size() == 0:
                b.spilled = False
        if b.fd >= 0 and not b.spilled and writer.is_closing():
            # Once its transport closes, the descriptor number may already belong to
            # a newer connection: never write to it again.
            b.fd = -1
            sent = b.length
        if b.fd >= 0 and not b.spilled:
            while sent < b.length:
                n = c_send(b.fd, b.data + sent, b.length - sent, MSG_NOSIGNAL | MSG_DONTWAIT)
                if n < 0:
                    if errno == EINTR:
                        continue
                    if errno != EAGAIN and errno != EWOULDBLOCK:
                        # The peer is gone; the transport will see it and close.
                        sent = b.length
                    break
                sent += n
        if sent < b.length:
            writer.write(PyBytes_FromStringAndSize(b.data + sent, b.length - sent))
            if b.fd >= 0:
                b.spilled = True
        self.bytes_sent += b.length
        self.writes += 1
        b.length = 0
        b.last_seq_flushed = b.last_seq_queued
        if b.capacity > _KEEP_CAPACITY:
            # Give back memory a burst took: a wallet that once got a burst (a run of
            # payments to its addresses) would otherwise hold its high-water mark.
            free(b.data)
            b.data = NULL
            b.capacity = 0
        return 0

    def flush(self):
        """Write every dirty, unpaused buffer once; returns how many were written."""
        cdef size_t i
        cdef uint32_t slot
        cdef int written = 0
        cdef OutBuf* b
        cdef vector[uint32_t] pending
        pending.swap(self._dirty)
        for i in range(pending.size()):
            slot = pending[i]
            b = &self._bufs[slot]
            b.dirty = False
            if not b.active or b.lagged or b.length == 0:
                continue
            if b.paused:
                continue
            self._flush_one(slot)
            written += 1
        return written

    @property
    def has_dirty(self):
        """Whether some buffer waits for ``flush``."""
        return not self._dirty.empty()

    def take_lagged(self):
        """Slots that passed the limit since the last call, with ``resume_from``."""
        cdef size_t i
        out = []
        for i in range(self._lagged.size()):
            slot = self._lagged[i]
            if self._bufs[slot].active:
                out.append((slot, self._bufs[slot].last_seq_flushed))
        self._lagged.clear()
        return out

    def pending(self, uint32_t slot):
        """Bytes queued for one slot and not yet written."""
        if slot >= self._nbufs:
            return 0
        return self._bufs[slot].length

    def is_lagged(self, uint32_t slot):
        """Whether the slot passed its limit."""
        return slot < self._nbufs and self._bufs[slot].lagged

    def last_seq_flushed(self, uint32_t slot):
        """Highest event seq handed to the kernel or transport for this slot."""
        return self._bufs[slot].last_seq_flushed
