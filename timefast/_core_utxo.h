/* The UTXO records of the compiled core (timefast/_core_utxo.pyx), in C++.
 *
 * Declared to Cython in _core_utxo.pxd; kept here, not in a verbatim block of a
 * .pxd, so that it is read, diffed and compiled as the C++ it is.
 */
#ifndef TIMEFAST_CORE_UTXO_H
#define TIMEFAST_CORE_UTXO_H

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

#endif
