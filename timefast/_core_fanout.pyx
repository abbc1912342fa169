# Frames and fan-out: one output buffer per connection in C memory, written
# straight to its socket.  Included by _core.pyx; its C layout is in
# _core_fanout.pxd, the system calls in _sys.pxd.

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy
from libcpp.vector cimport vector
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

from timefast._sys cimport c_send, MSG_NOSIGNAL, MSG_DONTWAIT, errno, EAGAIN, EWOULDBLOCK, EINTR


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


# What ``read_frames`` found: a text message whole in one frame (its payload
# unmasked), one whole frame of any other kind (websockets reads it), or a frame no
# client may send (websockets reads it and everything after, and fails the link).
FRAME_TEXT = 0
FRAME_OTHER = 1
FRAME_BAD = 2


def read_frames(const uint8_t[:] data, Py_ssize_t max_size):
    """Split client-to-server WebSocket frames off the start of ``data``.

    Returns ``(items, used, need)``: ``items`` is a list of ``(kind, bytes)`` in
    order, ``used`` the bytes they took, ``need`` how many bytes the unfinished
    frame after them needs in all (0 when that is not yet known: fewer than its
    header).  A FIN text frame, masked, with no reserved bit and at most
    ``max_size`` bytes is ``FRAME_TEXT`` with its payload unmasked; any other whole
    frame is ``FRAME_OTHER`` with its bytes as sent; a frame with a payload over
    ``max_size``, reserved bits or opcode, no mask or a 64-bit length with the top
    bit set
    is ``FRAME_BAD`` with the rest of ``data``, and nothing is read after it.
    """
    cdef Py_ssize_t n = data.shape[0], off = 0, head, length, end, i
    cdef uint8_t b0, b1
    cdef const uint8_t* p
    cdef const uint8_t* mask
    cdef uint8_t* out
    cdef bytes payload
    cdef list items = []
    if n == 0:
        return items, 0, 0
    p = &data[0]
    while n - off >= 2:
        b0 = p[off]
        b1 = p[off + 1]
        length = b1 & 0x7f
        head = 2
        if length == 126:
            head = 4
        elif length == 127:
            head = 10
        if not (b1 & 0x80) or (b0 & 0x70) or (b0 & 0x0f) in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
            items.append((FRAME_BAD, bytes(data[off:])))
            return items, n, 0
        head += 4
        if n - off < head:
            break
        if length == 126:
            length = (<Py_ssize_t>p[off + 2] << 8) | p[off + 3]
        elif length == 127:
            if p[off + 2] & 0x80:
                items.append((FRAME_BAD, bytes(data[off:])))
                return items, n, 0
            length = 0
            for i in range(8):
                length = (length << 8) | p[off + 2 + i]
                if length > max_size:
                    break
        if length > max_size:
            items.append((FRAME_BAD, bytes(data[off:])))
            return items, n, 0
        end = off + head + length
        if end > n:
            return items, off, end - off
        if b0 == 0x81:
            payload = PyBytes_FromStringAndSize(NULL, length)
            out = <uint8_t*>PyBytes_AS_STRING(payload)
            mask = p + off + head - 4
            for i in range(length):
                out[i] = p[off + head + i] ^ mask[i & 3]
            items.append((FRAME_TEXT, payload))
        else:
            items.append((FRAME_OTHER, bytes(data[off:end])))
        off = end
    return items, off, 0


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
