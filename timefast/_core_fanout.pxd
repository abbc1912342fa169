# Declarations of the fan-out (included by _core.pxd, after the subscriber
# index that Fanout holds): a connection's output buffer and Fanout's C layout.

from libc.stdint cimport uint32_t, uint64_t, int64_t
from libcpp.vector cimport vector


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
