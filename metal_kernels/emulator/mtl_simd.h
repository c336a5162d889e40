// SIMD-group functions: how each completes over the waiting (active) lanes, and the
// Metal names kernels call (simd_sum, simd_shuffle_down, threadgroup_barrier, ...).
#pragma once

#include "mtl_threads.h"

namespace mtl {

// ---------------------------------------------------------------------------------------
// SIMD-group function bodies.
template <class T>
inline T poison() {
  T t;
  memset(static_cast<void*>(&t), 0xff, sizeof(T));
  return t;
}
template <class T>
inline const T& in_of(const Lane* l) {
  return *static_cast<const T*>(l->in);
}
template <class T>
inline T& out_of(Lane* l) {
  return *static_cast<T*>(l->out);
}

struct OpSum {
  template <class T>
  static T apply(T a, T b) { return a + b; }
};
struct OpProduct {
  template <class T>
  static T apply(T a, T b) { return a * b; }
};
struct OpMax {
  template <class T>
  static T apply(T a, T b) { return metal::max(a, b); }
};
struct OpMin {
  template <class T>
  static T apply(T a, T b) { return metal::min(a, b); }
};
struct OpAnd {
  template <class T>
  static T apply(T a, T b) { return a & b; }
};
struct OpOr {
  template <class T>
  static T apply(T a, T b) { return a | b; }
};
struct OpXor {
  template <class T>
  static T apply(T a, T b) { return a ^ b; }
};

template <class T, class Op>
inline void reduce_fn(Lane* const* by_lane) {
  // A pairwise tree over lane ids, the shape of a hardware butterfly reduction.
  T vals[kSimdWidth];
  bool have[kSimdWidth];
  for (int i = 0; i < kSimdWidth; i++) {
    have[i] = by_lane[i] != nullptr;
    if (have[i]) vals[i] = in_of<T>(by_lane[i]);
  }
  for (int step = 1; step < kSimdWidth; step *= 2)
    for (int i = 0; i + step < kSimdWidth; i += 2 * step) {
      if (have[i] && have[i + step]) vals[i] = Op::apply(vals[i], vals[i + step]);
      else if (have[i + step]) vals[i] = vals[i + step];
      have[i] = have[i] || have[i + step];
    }
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) out_of<T>(by_lane[i]) = vals[0];
}

template <class T, class Op, bool Inclusive>
inline void prefix_fn(Lane* const* by_lane) {
  bool started = false;
  T acc{};
  for (int i = 0; i < kSimdWidth; i++) {
    if (!by_lane[i]) continue;
    T v = in_of<T>(by_lane[i]);
    if (Inclusive) {
      acc = started ? Op::apply(acc, v) : v;
      out_of<T>(by_lane[i]) = acc;
    } else {
      out_of<T>(by_lane[i]) = started ? acc : T(0);
      acc = started ? Op::apply(acc, v) : v;
    }
    started = true;
  }
}

enum ShuffleKind { kShuffle, kDown, kUp, kXor, kRotateDown, kRotateUp, kBroadcastFirst };

// Metal: shuffle_down leaves the upper `delta` lanes their own value, shuffle_up the lower
// ones. Reading an inactive lane is undefined on a GPU: here it yields 0xFF bytes.
template <class T, ShuffleKind K>
inline void shuffle_fn(Lane* const* by_lane) {
  T vals[kSimdWidth];
  int first_active = -1;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) {
      vals[i] = in_of<T>(by_lane[i]);
      if (first_active < 0) first_active = i;
    }
  for (int i = 0; i < kSimdWidth; i++) {
    if (!by_lane[i]) continue;
    uint32_t a = by_lane[i]->arg;
    int src;
    switch (K) {
      case kShuffle: src = int(a); break;
      case kDown: src = i + int(a) < kSimdWidth ? i + int(a) : i; break;
      case kUp: src = i - int(a) >= 0 ? i - int(a) : i; break;
      case kXor: src = i ^ int(a); break;
      case kRotateDown: src = (i + int(a)) % kSimdWidth; break;
      case kRotateUp: src = ((i - int(a)) % kSimdWidth + kSimdWidth) % kSimdWidth; break;
      case kBroadcastFirst: src = first_active; break;
    }
    out_of<T>(by_lane[i]) = (src >= 0 && src < kSimdWidth && by_lane[src]) ? vals[src] : poison<T>();
  }
}

inline void bool_all_fn(Lane* const* by_lane) {
  bool r = true;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) r = r && in_of<bool>(by_lane[i]);
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) out_of<bool>(by_lane[i]) = r;
}
inline void bool_any_fn(Lane* const* by_lane) {
  bool r = false;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) r = r || in_of<bool>(by_lane[i]);
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) out_of<bool>(by_lane[i]) = r;
}
inline void is_first_fn(Lane* const* by_lane) {
  bool seen = false;
  for (int i = 0; i < kSimdWidth; i++)
    if (by_lane[i]) {
      out_of<bool>(by_lane[i]) = !seen;
      seen = true;
    }
}
inline void no_data_fn(Lane* const*) {}

}  // namespace mtl

// ---------------------------------------------------------------------------------------
// The Metal names kernels call.
namespace metal {

using mtl_site = std::source_location;

inline void threadgroup_barrier(mem_flags, mtl_site site = mtl_site::current()) { mtl::barrier(site); }
inline void simdgroup_barrier(mem_flags, mtl_site site = mtl_site::current()) {
  mtl::collective("simdgroup_barrier", nullptr, nullptr, 0, &mtl::no_data_fn, site);
}

#define MTL_SIMD_REDUCE(name, Op)                                                        \
  template <class T>                                                                     \
  inline T name(T x, mtl_site site = mtl_site::current()) {                              \
    T r;                                                                                 \
    mtl::collective(#name, &x, &r, 0, &mtl::reduce_fn<T, mtl::Op>, site);                \
    return r;                                                                            \
  }
MTL_SIMD_REDUCE(simd_sum, OpSum)
MTL_SIMD_REDUCE(simd_product, OpProduct)
MTL_SIMD_REDUCE(simd_max, OpMax)
MTL_SIMD_REDUCE(simd_min, OpMin)
MTL_SIMD_REDUCE(simd_and, OpAnd)
MTL_SIMD_REDUCE(simd_or, OpOr)
MTL_SIMD_REDUCE(simd_xor, OpXor)
#undef MTL_SIMD_REDUCE

#define MTL_SIMD_PREFIX(name, Op, Inclusive)                                             \
  template <class T>                                                                     \
  inline T name(T x, mtl_site site = mtl_site::current()) {                              \
    T r;                                                                                 \
    mtl::collective(#name, &x, &r, 0, &mtl::prefix_fn<T, mtl::Op, Inclusive>, site);     \
    return r;                                                                            \
  }
MTL_SIMD_PREFIX(simd_prefix_inclusive_sum, OpSum, true)
MTL_SIMD_PREFIX(simd_prefix_exclusive_sum, OpSum, false)
MTL_SIMD_PREFIX(simd_prefix_inclusive_product, OpProduct, true)
MTL_SIMD_PREFIX(simd_prefix_exclusive_product, OpProduct, false)
#undef MTL_SIMD_PREFIX

#define MTL_SIMD_SHUFFLE(name, Kind)                                                     \
  template <class T>                                                                     \
  inline T name(T x, ushort arg, mtl_site site = mtl_site::current()) {                  \
    T r;                                                                                 \
    mtl::collective(#name, &x, &r, arg, &mtl::shuffle_fn<T, mtl::Kind>, site);           \
    return r;                                                                            \
  }
MTL_SIMD_SHUFFLE(simd_shuffle, kShuffle)
MTL_SIMD_SHUFFLE(simd_broadcast, kShuffle)
MTL_SIMD_SHUFFLE(simd_shuffle_down, kDown)
MTL_SIMD_SHUFFLE(simd_shuffle_up, kUp)
MTL_SIMD_SHUFFLE(simd_shuffle_xor, kXor)
MTL_SIMD_SHUFFLE(simd_shuffle_rotate_down, kRotateDown)
MTL_SIMD_SHUFFLE(simd_shuffle_rotate_up, kRotateUp)
#undef MTL_SIMD_SHUFFLE

template <class T>
inline T simd_broadcast_first(T x, mtl_site site = mtl_site::current()) {
  T r;
  mtl::collective("simd_broadcast_first", &x, &r, 0, &mtl::shuffle_fn<T, mtl::kBroadcastFirst>, site);
  return r;
}
inline bool simd_all(bool x, mtl_site site = mtl_site::current()) {
  bool r;
  mtl::collective("simd_all", &x, &r, 0, &mtl::bool_all_fn, site);
  return r;
}
inline bool simd_any(bool x, mtl_site site = mtl_site::current()) {
  bool r;
  mtl::collective("simd_any", &x, &r, 0, &mtl::bool_any_fn, site);
  return r;
}
inline bool simd_is_first(mtl_site site = mtl_site::current()) {
  bool r;
  mtl::collective("simd_is_first", nullptr, &r, 0, &mtl::is_first_fn, site);
  return r;
}

}  // namespace metal
