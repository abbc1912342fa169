# cython: language_level=3
# Declarations of the compiled core, so that other Cython modules (and readers)
# see the C layout of each class without reading its implementation.

from libc.stdint cimport uint8_t, int32_t, uint32_t, uint64_t, int64_t
from libcpp.vector cimport vector
from libcpp.unordered_set cimport unordered_set


cdef extern from *:
    """
    #include <cstdint>
    #include <cstring>
    #include <unordered_map>
    #include <vector>

    /* An outpoint: the 32 bytes of its txid (64 hex characters) and its vout. */
    struct tf_outkey {
        uint64_t w[4];
        uint32_t vout;
        bool operator==(const tf_outkey& o) const {
            return vout == o.vout && std::memcmp(w, o.w, sizeof w) == 0;
        }
    };
    /* Every byte counts: txids are hashes, but a table must not turn quadratic
       on keys that share a prefix (tests, or anyone naming outpoints). */
    struct tf_outkey_hash {
        size_t operator()(const tf_outkey& k) const noexcept {
            uint64_t h = k.w[0] * 0x9E3779B97F4A7C15ULL;
            h ^= k.w[1] * 0xC2B2AE3D27D4EB4FULL;
            h ^= k.w[2] * 0x165667B19E3779F9ULL;
            h ^= k.w[3] * 0xD6E8FEB86659FD93ULL;
            h ^= (uint64_t)k.vout * 0xFF51AFD7ED558CCDULL;
            return (size_t)(h ^ (h >> 32));
        }
    };
    /* One UTXO's record; `row` and `pos` place it in its address's coin list. */
    struct tf_coin {
        int64_t amount;
        int64_t block_height;   /* -1: none */
        uint32_t row;
        uint32_t pos;
        int32_t votes;
        uint8_t state;
        uint8_t has_spender;
        uint8_t spender[32];
    };
    typedef std::unordered_map<tf_outkey, tf_coin, tf_outkey_hash> tf_coin_map;
    typedef tf_coin_map::value_type tf_entry;
    typedef std::vector<tf_entry*> tf_entry_list;

    /* Map nodes never move, so address lists may point at them. */
    static inline tf_entry* tf_find(tf_coin_map& m, const tf_outkey& k) {
        auto it = m.find(k);
        return it == m.end() ? nullptr : &*it;
    }
    /* nullptr when the key is already there. */
    static inline tf_entry* tf_insert(tf_coin_map& m, const tf_outkey& k) {
        auto r = m.emplace(k, tf_coin());
        return r.second ? &*r.first : nullptr;
    }
    """
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
