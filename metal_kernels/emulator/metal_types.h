// The subset of the Metal Shading Language's types and functions that localllm's kernels
// use, written in C++20 so the emulator can compile a kernel's Metal source with g++/clang.
//
// What is here: address-space qualifiers (macros, see metal_emulator.h), scalar types
// (half as _Float16, bfloat as a rounding wrapper, Metal's short integer names), vector
// types of 2/3/4 elements with Metal's sizes and alignments (a 3-vector takes the room of
// 4), as_type, metal:: math (with fast:: and precise:: spellings), numeric_limits, and
// atomic<T> for atomic outputs. Anything else fails to compile, with the compiler's
// message naming what is missing: that is the point (never emulate silently).
//
// No <cmath>: its global overloads (::exp(float) ...) would make unqualified calls in
// kernel code ambiguous with metal::exp; the math goes through compiler builtins.
#pragma once

#include <cfloat>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace metal {

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef _Float16 half;

// bfloat: stored as the upper 16 bits of a float, rounded to nearest even on conversion.
// Arithmetic happens in float (as on GPUs without native bfloat ALUs).
struct bfloat {
  uint16_t bits;
  bfloat() = default;
  static uint16_t round_bits(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
  }
  bfloat(float f) : bits(round_bits(f)) {}
  bfloat(double f) : bits(round_bits(float(f))) {}
  bfloat(half f) : bits(round_bits(float(f))) {}
  bfloat(int f) : bits(round_bits(float(f))) {}
  bfloat(uint f) : bits(round_bits(float(f))) {}
  operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
  bfloat& operator+=(float o) { return *this = bfloat(float(*this) + o); }
  bfloat& operator-=(float o) { return *this = bfloat(float(*this) - o); }
  bfloat& operator*=(float o) { return *this = bfloat(float(*this) * o); }
  bfloat& operator/=(float o) { return *this = bfloat(float(*this) / o); }
};
inline bfloat operator+(bfloat a, bfloat b) { return bfloat(float(a) + float(b)); }
inline bfloat operator-(bfloat a, bfloat b) { return bfloat(float(a) - float(b)); }
inline bfloat operator*(bfloat a, bfloat b) { return bfloat(float(a) * float(b)); }
inline bfloat operator/(bfloat a, bfloat b) { return bfloat(float(a) / float(b)); }
inline bfloat operator-(bfloat a) { return bfloat(-float(a)); }
#define MTL_BF_MIXED(op)                                                            \
  inline float operator op(bfloat a, float b) { return float(a) op b; }             \
  inline float operator op(float a, bfloat b) { return a op float(b); }             \
  inline bfloat operator op(bfloat a, int b) { return bfloat(float(a) op float(b)); } \
  inline bfloat operator op(int a, bfloat b) { return bfloat(float(a) op float(b)); }
MTL_BF_MIXED(+)
MTL_BF_MIXED(-)
MTL_BF_MIXED(*)
MTL_BF_MIXED(/)
#undef MTL_BF_MIXED
#define MTL_BF_CMP(op)                                                       \
  inline bool operator op(bfloat a, bfloat b) { return float(a) op float(b); } \
  inline bool operator op(bfloat a, float b) { return float(a) op b; }         \
  inline bool operator op(float a, bfloat b) { return a op float(b); }
MTL_BF_CMP(<)
MTL_BF_CMP(>)
MTL_BF_CMP(<=)
MTL_BF_CMP(>=)
MTL_BF_CMP(==)
MTL_BF_CMP(!=)
#undef MTL_BF_CMP

template <class T>
inline constexpr bool is_scalar_v =
    std::is_integral_v<T> || std::is_floating_point_v<T> || std::is_same_v<T, half> ||
    std::is_same_v<T, bfloat>;

// ---------------------------------------------------------------------------------------
// Vectors. Metal's layout: N elements, a 3-vector padded to 4, aligned to its size.
template <class T, int N>
struct vec_storage;
template <class T>
struct vec_storage<T, 2> {
  union {
    T v[2];
    struct { T x, y; };
  };
};
template <class T>
struct vec_storage<T, 3> {
  union {
    T v[4];
    struct { T x, y, z; };
  };
};
template <class T>
struct vec_storage<T, 4> {
  union {
    T v[4];
    struct { T x, y, z, w; };
  };
};

template <class T, int N>
struct alignas(sizeof(T) * (N == 3 ? 4 : N)) vec : vec_storage<T, N> {
  using vec_storage<T, N>::v;
  vec() = default;
  template <class U>
    requires is_scalar_v<U>
  vec(U s) {
    for (int i = 0; i < N; i++) v[i] = T(s);
  }
  vec(T a, T b)
    requires(N == 2)
  {
    v[0] = a;
    v[1] = b;
  }
  vec(T a, T b, T c)
    requires(N == 3)
  {
    v[0] = a;
    v[1] = b;
    v[2] = c;
  }
  vec(T a, T b, T c, T d)
    requires(N == 4)
  {
    v[0] = a;
    v[1] = b;
    v[2] = c;
    v[3] = d;
  }
  vec(vec<T, 2> a, vec<T, 2> b)
    requires(N == 4)
  {
    v[0] = a.v[0];
    v[1] = a.v[1];
    v[2] = b.v[0];
    v[3] = b.v[1];
  }
  vec(vec<T, 3> a, T d)
    requires(N == 4)
  {
    v[0] = a.v[0];
    v[1] = a.v[1];
    v[2] = a.v[2];
    v[3] = d;
  }
  vec(vec<T, 2> a, T c)
    requires(N == 3)
  {
    v[0] = a.v[0];
    v[1] = a.v[1];
    v[2] = c;
  }
  template <class U>
  explicit vec(const vec<U, N>& o) {
    for (int i = 0; i < N; i++) v[i] = T(o.v[i]);
  }
  T& operator[](int i) { return v[i]; }
  const T& operator[](int i) const { return v[i]; }
};

template <class T>
struct is_vec : std::false_type {};
template <class T, int N>
struct is_vec<vec<T, N>> : std::true_type {};

// Elementwise: R(f(a[i], b[i])) over the lanes of two vectors.
template <class R, class T, int N, class F>
inline vec<R, N> zip_with(const vec<T, N>& a, const vec<T, N>& b, F f) {
  vec<R, N> r;
  for (int i = 0; i < N; i++) r.v[i] = R(f(a.v[i], b.v[i]));
  return r;
}

// Arithmetic (result: the vector's type) and comparisons (result: a bool vector), between
// two vectors or a vector and a scalar converted to the element type.
#define MTL_VEC_OP(op, R)                                                                   \
  template <class T, int N>                                                                 \
  inline vec<R, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {                    \
    return zip_with<R>(a, b, [](T x, T y) { return x op y; });                              \
  }                                                                                         \
  template <class T, int N, class U>                                                        \
    requires is_scalar_v<U>                                                                 \
  inline vec<R, N> operator op(const vec<T, N>& a, U b) {                                   \
    return zip_with<R>(a, vec<T, N>(T(b)), [](T x, T y) { return x op y; });                \
  }                                                                                         \
  template <class T, int N, class U>                                                        \
    requires is_scalar_v<U>                                                                 \
  inline vec<R, N> operator op(U a, const vec<T, N>& b) {                                   \
    return zip_with<R>(vec<T, N>(T(a)), b, [](T x, T y) { return x op y; });                \
  }
#define MTL_VEC_ARITH(op)                                          \
  MTL_VEC_OP(op, T)                                                \
  template <class T, int N, class U>                               \
  inline vec<T, N>& operator op##=(vec<T, N>& a, const U& b) {     \
    a = a op b;                                                    \
    return a;                                                      \
  }
MTL_VEC_ARITH(+)
MTL_VEC_ARITH(-)
MTL_VEC_ARITH(*)
MTL_VEC_ARITH(/)
MTL_VEC_ARITH(%)
MTL_VEC_ARITH(&)
MTL_VEC_ARITH(|)
MTL_VEC_ARITH(^)
MTL_VEC_ARITH(<<)
MTL_VEC_ARITH(>>)
MTL_VEC_OP(==, bool)
MTL_VEC_OP(!=, bool)
MTL_VEC_OP(<, bool)
MTL_VEC_OP(>, bool)
MTL_VEC_OP(<=, bool)
MTL_VEC_OP(>=, bool)
#undef MTL_VEC_ARITH
#undef MTL_VEC_OP

template <class T, int N>
inline vec<T, N> operator-(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; i++) r.v[i] = T(-a.v[i]);
  return r;
}
template <class T, int N>
inline vec<T, N> operator~(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; i++) r.v[i] = T(~a.v[i]);
  return r;
}
template <int N>
inline bool all(const vec<bool, N>& a) {
  for (int i = 0; i < N; i++)
    if (!a.v[i]) return false;
  return true;
}
template <int N>
inline bool any(const vec<bool, N>& a) {
  for (int i = 0; i < N; i++)
    if (a.v[i]) return true;
  return false;
}

#define MTL_VEC_TYPES(T)    \
  typedef vec<T, 2> T##2; \
  typedef vec<T, 3> T##3; \
  typedef vec<T, 4> T##4;
MTL_VEC_TYPES(float)
MTL_VEC_TYPES(half)
MTL_VEC_TYPES(bfloat)
MTL_VEC_TYPES(int)
MTL_VEC_TYPES(uint)
MTL_VEC_TYPES(short)
MTL_VEC_TYPES(ushort)
MTL_VEC_TYPES(char)
MTL_VEC_TYPES(uchar)
MTL_VEC_TYPES(long)
MTL_VEC_TYPES(ulong)
MTL_VEC_TYPES(bool)
#undef MTL_VEC_TYPES

// ---------------------------------------------------------------------------------------
template <class To, class From>
inline To as_type(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs types of the same size");
  To t;
  __builtin_memcpy(&t, &f, sizeof(To));
  return t;
}

template <class T>
struct numeric_limits;
#define MTL_INT_LIMITS(T, LO, HI)                  \
  template <>                                      \
  struct numeric_limits<T> {                       \
    static constexpr T min() { return LO; }        \
    static constexpr T lowest() { return LO; }     \
    static constexpr T max() { return HI; }        \
  };
MTL_INT_LIMITS(int8_t, -128, 127)
MTL_INT_LIMITS(uint8_t, 0, 255)
MTL_INT_LIMITS(int16_t, -32768, 32767)
MTL_INT_LIMITS(uint16_t, 0, 65535)
MTL_INT_LIMITS(int32_t, INT32_MIN, INT32_MAX)
MTL_INT_LIMITS(uint32_t, 0, UINT32_MAX)
MTL_INT_LIMITS(int64_t, INT64_MIN, INT64_MAX)
MTL_INT_LIMITS(uint64_t, 0, UINT64_MAX)
#undef MTL_INT_LIMITS
template <>
struct numeric_limits<float> {
  static constexpr float min() { return FLT_MIN; }
  static constexpr float lowest() { return -FLT_MAX; }
  static constexpr float max() { return FLT_MAX; }
  static constexpr float epsilon() { return FLT_EPSILON; }
  static constexpr float infinity() { return __builtin_inff(); }
  static constexpr float quiet_NaN() { return __builtin_nanf(""); }
};
template <>
struct numeric_limits<half> {
  static constexpr half min() { return half(6.103515625e-05f); }
  static constexpr half lowest() { return half(-65504.0f); }
  static constexpr half max() { return half(65504.0f); }
  static constexpr half epsilon() { return half(0.0009765625f); }
  static constexpr half infinity() { return half(__builtin_inff()); }
  static constexpr half quiet_NaN() { return half(__builtin_nanf("")); }
};

// ---------------------------------------------------------------------------------------
// Math. Each function takes float and half (half computes in float and rounds, as Metal's
// precise half math does) and works elementwise on vectors.
#define MTL_UNARY(name, builtin)                                          \
  inline float name(float x) { return builtin(x); }                       \
  inline half name(half x) { return half(builtin(float(x))); }            \
  inline float name(bfloat x) { return builtin(float(x)); }               \
  template <class T, int N>                                               \
  inline vec<T, N> name(const vec<T, N>& a) {                             \
    vec<T, N> r;                                                          \
    for (int i = 0; i < N; i++) r.v[i] = T(name(a.v[i]));                 \
    return r;                                                             \
  }
inline float mtl_rsqrt(float x) { return 1.0f / __builtin_sqrtf(x); }
inline float mtl_exp10(float x) { return __builtin_powf(10.0f, x); }
MTL_UNARY(exp, __builtin_expf)
MTL_UNARY(exp2, __builtin_exp2f)
MTL_UNARY(exp10, mtl_exp10)
MTL_UNARY(log, __builtin_logf)
MTL_UNARY(log2, __builtin_log2f)
MTL_UNARY(log10, __builtin_log10f)
MTL_UNARY(sqrt, __builtin_sqrtf)
MTL_UNARY(rsqrt, mtl_rsqrt)
MTL_UNARY(sin, __builtin_sinf)
MTL_UNARY(cos, __builtin_cosf)
MTL_UNARY(tan, __builtin_tanf)
MTL_UNARY(tanh, __builtin_tanhf)
MTL_UNARY(atan, __builtin_atanf)
MTL_UNARY(erf, __builtin_erff)
MTL_UNARY(floor, __builtin_floorf)
MTL_UNARY(ceil, __builtin_ceilf)
MTL_UNARY(round, __builtin_roundf)
MTL_UNARY(rint, __builtin_rintf)
MTL_UNARY(trunc, __builtin_truncf)
MTL_UNARY(fabs, __builtin_fabsf)
#undef MTL_UNARY

template <class T>
  requires std::is_integral_v<T>
inline T abs(T x) {
  return x < 0 ? T(-x) : x;
}
inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return half(__builtin_fabsf(float(x))); }
template <class T, int N>
inline vec<T, N> abs(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; i++) r.v[i] = abs(a.v[i]);
  return r;
}

#define MTL_BINARY(name, expr)                                                    \
  template <class T>                                                              \
    requires is_scalar_v<T>                                                       \
  inline T name(T a, T b) {                                                       \
    return expr;                                                                  \
  }                                                                               \
  template <class T, int N>                                                       \
  inline vec<T, N> name(const vec<T, N>& a, const vec<T, N>& b) {                 \
    vec<T, N> r;                                                                  \
    for (int i = 0; i < N; i++) r.v[i] = name(a.v[i], b.v[i]);                    \
    return r;                                                                     \
  }                                                                               \
  template <class T, int N, class U>                                              \
    requires is_scalar_v<U>                                                       \
  inline vec<T, N> name(const vec<T, N>& a, U b) {                                \
    return name(a, vec<T, N>(T(b)));                                              \
  }
// max/min of a NaN and a number give the number, like Metal's fmax/fmin.
MTL_BINARY(max, (a != a) ? b : ((b != b) ? a : (a > b ? a : b)))
MTL_BINARY(min, (a != a) ? b : ((b != b) ? a : (a < b ? a : b)))
MTL_BINARY(fmax, (a != a) ? b : ((b != b) ? a : (a > b ? a : b)))
MTL_BINARY(fmin, (a != a) ? b : ((b != b) ? a : (a < b ? a : b)))
MTL_BINARY(pow, T(__builtin_powf(float(a), float(b))))
MTL_BINARY(powr, T(__builtin_powf(float(a), float(b))))
MTL_BINARY(fmod, T(__builtin_fmodf(float(a), float(b))))
MTL_BINARY(atan2, T(__builtin_atan2f(float(a), float(b))))
MTL_BINARY(copysign, T(__builtin_copysignf(float(a), float(b))))
#undef MTL_BINARY

template <class T>
  requires is_scalar_v<T>
inline T fma(T a, T b, T c) {
  return T(__builtin_fmaf(float(a), float(b), float(c)));
}
template <class T, int N>
inline vec<T, N> fma(const vec<T, N>& a, const vec<T, N>& b, const vec<T, N>& c) {
  vec<T, N> r;
  for (int i = 0; i < N; i++) r.v[i] = fma(a.v[i], b.v[i], c.v[i]);
  return r;
}
template <class T, class L, class H>
inline T clamp(T x, L lo, H hi) {
  return min(max(x, T(lo)), T(hi));
}
template <class T, class U>
inline T mix(T x, T y, U a) {
  return x + (y - x) * a;
}
template <class T>
inline T select(T a, T b, bool c) {
  return c ? b : a;
}
template <class T, int N>
inline T dot(const vec<T, N>& a, const vec<T, N>& b) {
  T s = T(0);
  for (int i = 0; i < N; i++) s += a.v[i] * b.v[i];
  return s;
}
inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isnan(half x) { return __builtin_isnan(float(x)); }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isinf(half x) { return __builtin_isinf(float(x)); }
inline bool isfinite(float x) { return __builtin_isfinite(x); }
inline bool isfinite(half x) { return __builtin_isfinite(float(x)); }
inline bool signbit(float x) { return __builtin_signbit(x); }
inline float precise_divide(float a, float b) { return a / b; }

// Metal's precise:: and fast:: spellings; here both are the precise functions.
#define MTL_MATH_NAMESPACE(name)                           \
  namespace name {                                         \
  using metal::cos;                                        \
  using metal::exp;                                        \
  using metal::exp2;                                       \
  using metal::log;                                        \
  using metal::log2;                                       \
  using metal::pow;                                        \
  using metal::rsqrt;                                      \
  using metal::sin;                                        \
  using metal::sqrt;                                       \
  using metal::tanh;                                       \
  inline float divide(float a, float b) { return a / b; } \
  }
MTL_MATH_NAMESPACE(precise)
MTL_MATH_NAMESPACE(fast)
#undef MTL_MATH_NAMESPACE

// ---------------------------------------------------------------------------------------
// Atomics, for kernels built with atomic_outputs. The emulator never preempts a thread
// between two atomic operations (threads switch only at barriers and SIMD-group
// functions), so plain memory operations are atomic here.
enum memory_order { memory_order_relaxed };
template <class T>
struct atomic {
  T value;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
template <class T, class U>
inline void atomic_store_explicit(atomic<T>* obj, U v, memory_order) {
  obj->value = T(v);
}
template <class T>
inline T atomic_load_explicit(const atomic<T>* obj, memory_order) {
  return obj->value;
}
template <class T, class U>
inline T atomic_fetch_add_explicit(atomic<T>* obj, U v, memory_order) {
  T old = obj->value;
  obj->value = T(old + v);
  return old;
}
template <class T, class U>
inline T atomic_fetch_sub_explicit(atomic<T>* obj, U v, memory_order) {
  T old = obj->value;
  obj->value = T(old - v);
  return old;
}
template <class T, class U>
inline T atomic_fetch_max_explicit(atomic<T>* obj, U v, memory_order) {
  T old = obj->value;
  obj->value = max(old, T(v));
  return old;
}
template <class T, class U>
inline T atomic_fetch_min_explicit(atomic<T>* obj, U v, memory_order) {
  T old = obj->value;
  obj->value = min(old, T(v));
  return old;
}
template <class T, class U>
inline T atomic_exchange_explicit(atomic<T>* obj, U v, memory_order) {
  T old = obj->value;
  obj->value = T(v);
  return old;
}

}  // namespace metal

// MLX's Metal prelude names these (mlx/backend/metal/kernels/utils.h, bf16.h).
typedef metal::half float16_t;
typedef metal::bfloat bfloat16_t;

#ifndef INFINITY
#define INFINITY (__builtin_inff())
#endif
#ifndef NAN
#define NAN (__builtin_nanf(""))
#endif
#ifndef MAXFLOAT
#define MAXFLOAT FLT_MAX
#endif
#define HUGE_VALF (__builtin_huge_valf())
#define M_PI_F 3.14159265358979323846264338327950288f
#define M_LN2_F 0.693147180559945309417232121458176568f
#define M_LOG2E_F 1.44269504088896340735992468100189214f
#define M_SQRT2_F 1.41421356237309504880168872420969808f
