# The subscriber index of the compiled core: address -> subscribers and
# subscriber -> addresses.  Included by _core.pyx; its C layout is in
# _core_subscribers.pxd.

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.vector cimport vector
from cpython cimport array
from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_AsUnsignedLong
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_SIZE, PySequence_Fast_ITEMS

import array as _array_module

cdef array.array _UINT32_ARRAY = _array_module.array("I")


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
