# cython: language_level=3
# C externs of the operating system, kept apart from the core's logic (as uvloop
# keeps its includes/): the core writes frames straight to sockets with send().

cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR
