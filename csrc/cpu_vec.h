// ISA-neutral vector vocabulary shared by the CPU kernels (cfi_kernels.h, sconv_kernels.h).
//
// No include guard on purpose: each kernel header is included once per instruction set,
// inside its own namespace and `#pragma GCC target` region, and includes this file there.
// Relies on <cstring> and <cstdint> from the includer.
//   CPU_VEC_BYTES  the native vector width, set by the includer per instruction set (64 for
//                  AVX-512, 32 for AVX2; 16 by default). Vectors must be native: a GCC vector
//                  wider than the hardware's has no machine mode, lives in memory, and every
//                  FMA then goes through the stack (measured on AVX2: 3.5 GFLOP/s instead of
//                  ~40 for the sparse convolution).
//   acc_t<T>  accumulation type (fp32, fp64 for double); vec_t<T> one native vector of it
//   Chunk<T>  what one 64-byte load (a "unit", the layouts' granule) becomes: nvec vectors;
//             bf16 splits each 2V-byte half into even and odd lanes (one shift, one mask)
//   hsum, hsum4  horizontal sums of one / four vectors
#ifndef CPU_VEC_BYTES
#define CPU_VEC_BYTES 16
#endif
// Loops over a register tile must be unrolled, or its arrays of vectors live on the stack.
#define CPU_UNROLL _Pragma("GCC unroll 16")
using bf16_raw = uint16_t;

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;
template <typename A> struct VecOf { typedef A type __attribute__((vector_size(CPU_VEC_BYTES))); };
template <typename T> using vec_t = typename VecOf<acc_t<T>>::type;

static inline float to_acc(float v) { return v; }
static inline double to_acc(double v) { return v; }
static inline float to_acc(bf16_raw h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T> static inline T from_acc(acc_t<T> v) { return T(v); }
template <> inline bf16_raw from_acc<bf16_raw>(float v) {  // round to nearest even, keep NaN
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_raw(0x7fc0);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_raw(u >> 16);
}

constexpr int kVecsPerUnit = 64 / CPU_VEC_BYTES;

template <typename T> struct Chunk {  // fp32 / fp64: natural lane order
  static constexpr int elems = 64 / int(sizeof(T));
  static constexpr int nvec = kVecsPerUnit;
  static inline void load(const T* p, vec_t<T>* v) {
    CPU_UNROLL
    for (int i = 0; i < nvec; ++i) std::memcpy(v + i, p + i * (elems / nvec), CPU_VEC_BYTES);
  }
  static inline int lane(int e) { return e; }
};
template <> struct Chunk<bf16_raw> {  // 32 bf16: per 2F-element half, even lanes then odd
  static constexpr int elems = 32;
  static constexpr int nvec = 2 * kVecsPerUnit;
  static constexpr int F = CPU_VEC_BYTES / 4;  // fp32 lanes per vector
  static inline void load(const bf16_raw* p, vec_t<float>* v) {
    typedef uint32_t w32 __attribute__((vector_size(CPU_VEC_BYTES)));
    CPU_UNROLL
    for (int i = 0; i < kVecsPerUnit; ++i) {
      w32 w;
      std::memcpy(&w, p + i * 2 * F, CPU_VEC_BYTES);
      v[2 * i] = (vec_t<float>)(w << 16);
      v[2 * i + 1] = (vec_t<float>)(w & 0xffff0000u);
    }
  }
  static inline int lane(int e) { return (e / (2 * F)) * 2 * F + (e & 1) * F + (e % (2 * F)) / 2; }
};

template <typename V, typename A> static inline A hsum(V v) {  // tree reduction of one vector
  constexpr int n = int(sizeof(V) / sizeof(A));
  A s[n];
  std::memcpy(s, &v, sizeof(V));
  for (int w = n / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) s[i] += s[i + w];
  return s[0];
}


// Horizontal sums of four vectors at once (a transpose-and-add tree): the weight gradient
// needs one per nonzero and batch tile, and four single reductions would cost ~3x more.
// Each vector is first folded to 16 bytes (halves added), then the four are transposed.
#if defined(__clang__) || __GNUC__ >= 12
typedef float hs_f4 __attribute__((vector_size(16)));
typedef double hs_d2 __attribute__((vector_size(16)));
static inline hs_f4 fold16(hs_f4 v) { return v; }
static inline hs_d2 fold16(hs_d2 v) { return v; }
#if CPU_VEC_BYTES >= 32
typedef float hs_f8 __attribute__((vector_size(32)));
typedef double hs_d4 __attribute__((vector_size(32)));
static inline hs_f4 fold16(hs_f8 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
}
static inline hs_d2 fold16(hs_d4 v) {
  return __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
}
#endif
#if CPU_VEC_BYTES >= 64
typedef float hs_f16 __attribute__((vector_size(64)));
typedef double hs_d8 __attribute__((vector_size(64)));
static inline hs_f4 fold16(hs_f16 v) {
  return fold16(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}
static inline hs_d2 fold16(hs_d8 v) {
  return fold16(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
}
#endif
static inline void hsum4(const vec_t<float>* a, float* out) {
  const hs_f4 b0 = fold16(a[0]), b1 = fold16(a[1]), b2 = fold16(a[2]), b3 = fold16(a[3]);
  const hs_f4 c01 = __builtin_shufflevector(b0, b1, 0, 1, 4, 5) +
                    __builtin_shufflevector(b0, b1, 2, 3, 6, 7);
  const hs_f4 c23 = __builtin_shufflevector(b2, b3, 0, 1, 4, 5) +
                    __builtin_shufflevector(b2, b3, 2, 3, 6, 7);
  const hs_f4 d = __builtin_shufflevector(c01, c23, 0, 2, 4, 6) +
                  __builtin_shufflevector(c01, c23, 1, 3, 5, 7);
  std::memcpy(out, &d, sizeof(d));
}
static inline void hsum4(const vec_t<double>* a, double* out) {
  const hs_d2 b[4] = {fold16(a[0]), fold16(a[1]), fold16(a[2]), fold16(a[3])};
  for (int q = 0; q < 4; ++q) out[q] = b[q][0] + b[q][1];
}
#else
template <typename V, typename A> static inline void hsum4(const V* a, A* out) {
  for (int q = 0; q < 4; ++q) out[q] = hsum<V, A>(a[q]);
}
#endif
