// ISA-neutral vector vocabulary shared by the CPU kernels (cfi_kernels.h, sconv_kernels.h).
//
// No include guard on purpose: each kernel header is included once per instruction set,
// inside its own namespace and `#pragma GCC target` region, and includes this file there.
// Relies on <cstring> and <cstdint> from the includer.
//   acc_t<T>  accumulation type (fp32, fp64 for double); vec_t<T> a 64-byte vector of it
//   Chunk<T>  what one 64-byte load becomes (bf16: even and odd lanes as two fp32 vectors)
//   hsum, hsum4  horizontal sums of one / four vectors
using bf16_raw = uint16_t;

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;
template <typename A> struct VecOf { typedef A type __attribute__((vector_size(64))); };
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

template <typename T> struct Chunk {  // fp32 / fp64: one vector, natural lane order
  static constexpr int elems = 64 / int(sizeof(T));
  static constexpr int nvec = 1;
  static inline void load(const T* p, vec_t<T>* v) { std::memcpy(v, p, 64); }
  static inline int lane(int e) { return e; }
};
template <> struct Chunk<bf16_raw> {  // 32 bf16 -> even lanes, odd lanes
  static constexpr int elems = 32;
  static constexpr int nvec = 2;
  static inline void load(const bf16_raw* p, vec_t<float>* v) {
    typedef uint32_t w16 __attribute__((vector_size(64)));
    w16 w;
    std::memcpy(&w, p, 64);
    v[0] = (vec_t<float>)(w << 16);
    v[1] = (vec_t<float>)(w & 0xffff0000u);
  }
  static inline int lane(int e) { return (e & 1) * 16 + (e >> 1); }
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
#if defined(__clang__) || __GNUC__ >= 12
static inline void hsum4(const vec_t<float>* a, float* out) {
  typedef float f8 __attribute__((vector_size(32)));
  typedef float f4 __attribute__((vector_size(16)));
  f8 b[4];
  for (int q = 0; q < 4; ++q)
    b[q] = __builtin_shufflevector(a[q], a[q], 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(a[q], a[q], 8, 9, 10, 11, 12, 13, 14, 15);
  const f8 c01 = __builtin_shufflevector(b[0], b[1], 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(b[0], b[1], 4, 5, 6, 7, 12, 13, 14, 15);
  const f8 c23 = __builtin_shufflevector(b[2], b[3], 0, 1, 2, 3, 8, 9, 10, 11) +
                 __builtin_shufflevector(b[2], b[3], 4, 5, 6, 7, 12, 13, 14, 15);
  const f8 d = __builtin_shufflevector(c01, c23, 0, 2, 4, 6, 8, 10, 12, 14) +
               __builtin_shufflevector(c01, c23, 1, 3, 5, 7, 9, 11, 13, 15);
  const f4 e = __builtin_shufflevector(d, d, 0, 2, 4, 6) + __builtin_shufflevector(d, d, 1, 3, 5, 7);
  std::memcpy(out, &e, sizeof(e));
}
static inline void hsum4(const vec_t<double>* a, double* out) {
  typedef double d4 __attribute__((vector_size(32)));
  d4 b[4];
  for (int q = 0; q < 4; ++q)
    b[q] = __builtin_shufflevector(a[q], a[q], 0, 1, 2, 3) +
           __builtin_shufflevector(a[q], a[q], 4, 5, 6, 7);
  const d4 c01 = __builtin_shufflevector(b[0], b[1], 0, 1, 4, 5) +
                 __builtin_shufflevector(b[0], b[1], 2, 3, 6, 7);
  const d4 c23 = __builtin_shufflevector(b[2], b[3], 0, 1, 4, 5) +
                 __builtin_shufflevector(b[2], b[3], 2, 3, 6, 7);
  const d4 d = __builtin_shufflevector(c01, c23, 0, 2, 4, 6) +
               __builtin_shufflevector(c01, c23, 1, 3, 5, 7);
  std::memcpy(out, &d, sizeof(d));
}
#else
template <typename V, typename A> static inline void hsum4(const V* a, A* out) {
  for (int q = 0; q < 4; ++q) out[q] = hsum<V, A>(a[q]);
}
#endif
