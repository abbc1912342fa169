# Declarations of the signature check (included by _core.pxd).

# libsodium's crypto_sign_verify_detached: 0 when the signature is good.  The
# caller passes its address (crypto.py finds it in PyNaCl's libsodium), so the
# core links to no library.
ctypedef int (*_verify_fn)(const unsigned char* sig, const unsigned char* m,
                           unsigned long long mlen, const unsigned char* pk) noexcept nogil
