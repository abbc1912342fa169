# Signature checks in bulk, without the GIL.  Included by _core.pyx; the
# signature of the C function it calls is in _core_verify.pxd.

from libcpp.vector cimport vector
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


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
