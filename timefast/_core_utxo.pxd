# Declarations of the UTXO table (included by _core.pxd): the C++ records of
# _core_utxo.h as Cython sees them, the state numbers, UtxoTable's C layout.

from libc.stdint cimport uint8_t, int32_t, uint32_t, int64_t, uint64_t
from libcpp.vector cimport vector


cdef extern from "_core_utxo.h":
    ctypedef struct tf_outkey:
        uint64_t w[4]
        uint32_t vout
    ctypedef struct tf_coin:
        int64_t amount
        int64_t block_height
        uint32_t row
        uint32_t pos
        int32_t votes
        uint8_t state
        uint8_t has_spender
        uint8_t spender[32]
    cdef cppclass tf_entry:
        tf_outkey first
        tf_coin second
    cdef cppclass tf_coin_map:
        size_t size()
        size_t erase(const tf_outkey&)
    ctypedef vector[tf_entry*] tf_entry_list
    tf_entry* tf_find(tf_coin_map& m, const tf_outkey& k)
    tf_entry* tf_insert(tf_coin_map& m, const tf_outkey& k) except +


# A coin's state (tf_coin.state); the names are STATES, in this order.
cdef enum:
    UNSPENT = 0
    LOCKED = 1
    SPENT_PENDING = 2
    SPENT_FINALIZED = 3
    CONFIRMED = 4
    N_STATES = 5


# One walk over an address's coins, oldest first (UtxoTable._walk, _next_coin).
cdef struct _CoinWalk:
    tf_entry_list* lst
    size_t i
    size_t n


cdef class UtxoTable:
    # Records live in C (about 140 bytes a coin, against some 500 for Python
    # objects): a node's memory is mostly its UTXO set.
    cdef tf_coin_map _coins                 # outpoint -> record
    cdef dict _rows                         # address -> row id (rows with a coin)
    cdef list _row_address                  # row id -> address, None when free
    cdef vector[tf_entry_list] _row_coins   # row id -> its coins, oldest first (NULL: gone)
    cdef vector[uint32_t] _row_dead         # row id -> NULLs in its list
    cdef vector[uint32_t] _free_rows
    cdef tf_entry* _find(self, str txid, long vout) except NULL
    cdef uint32_t _row_for(self, str address) except? 0xFFFFFFFF
    cdef void _unlink(self, tf_entry* e) noexcept
    cdef inline _CoinWalk _walk(self, str address) except *
    cpdef int check_lock(self, str txid, list outpoints) except -1
    cpdef int lock(self, str txid, list outpoints) except -1
