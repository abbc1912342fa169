# Declarations of the subscriber index (included by _core.pxd): its C layout.

from libc.stdint cimport uint32_t, uint64_t
from libcpp.vector cimport vector
from libcpp.unordered_set cimport unordered_set


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
