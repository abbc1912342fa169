# cython: language_level=3
# Declarations of the compiled core, so that other Cython modules (and readers)
# see the C layout of each class without reading its implementation.

from libc.stdint cimport uint8_t, int32_t, uint32_t, uint64_t, int64_t
from libcpp.vector cimport vector
from libcpp.unordered_set cimport unordered_set


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
    cdef tf_entry_list* _coins_of(self, str address) except? NULL
    cpdef int check_lock(self, str txid, list outpoints) except -1
    cpdef int lock(self, str txid, list outpoints) except -1


cdef class SubscriberIndex:
    cdef dict _rows                         # address -> row id
    cdef list _row_address                  # row id -> address, None when free
    cdef vector[vector[uint32_t]] _subs_of_row
    cdef vector[vector[uint32_t]] _rows_of_sub
    cdef vector[uint32_t] _free_rows
    cdef unordered_set[uint64_t] _pairs     # (row << 32) | subscriber
    cdef vector[uint64_t] _stamp            # per subscriber: last route generation
    cdef uint64_t _generation
    cdef Py_ssize_t _subscriber_count
    cdef int _route_into(self, object addresses, vector[uint32_t]* out) except -1
    cdef void _remove_from_row(self, uint32_t row, uint32_t sub) noexcept
    cdef void _release_row(self, uint32_t row)
    cdef void _ensure_sub(self, uint32_t sub) noexcept


cdef struct OutBuf:
    char* data
    Py_ssize_t length
    Py_ssize_t capacity
    int fd
    bint active
    bint live
    bint paused
    bint lagged
    bint dirty
    bint spilled
    int64_t last_seq_queued
    int64_t last_seq_flushed


cdef class Fanout:
    cdef readonly SubscriberIndex index
    cdef OutBuf* _bufs
    cdef Py_ssize_t _nbufs
    cdef list _writers
    cdef vector[uint32_t] _dirty
    cdef vector[uint32_t] _lagged
    cdef vector[uint32_t] _free_slots
    cdef vector[uint32_t] _targets
    cdef Py_ssize_t _limit
    cdef Py_ssize_t _open_count
    cdef readonly uint64_t frames_queued
    cdef readonly uint64_t bytes_sent
    cdef readonly uint64_t writes
    cdef readonly uint64_t lag_closes
    cdef bint _append(self, uint32_t slot, const char* data, Py_ssize_t n, int64_t seq) noexcept
    cdef int _flush_one(self, uint32_t slot) except -1
