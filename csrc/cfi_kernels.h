// ISA-neutral CPU kernel bodies for the constant fan-in (condensed) sparse linear layer.
//
// This file is deliberately free of includes and include guards: cfi_cpu.cpp includes it
// once per instruction set, each time inside its own namespace and `#pragma GCC target`
// region, so one source yields AVX-512, AVX2 and baseline x86-64 code and the binary picks
// one at run time (it must not crash on CPUs without AVX-512). Vectors are GCC vector
// extensions of 64 bytes: a zmm register under AVX-512, two ymm under AVX2, four xmm
// otherwise. CFI_GATHER16 (set by the includer) enables the AVX-512 gather for batch 1.
//
// Layouts (W = condensed values V[n_out, k] with column indices I[n_out, k]):
//   rows  : "row r of a sparse matrix" = entries p in [begin(r), end(r)) with col(p), val(p).
//           FixedRows is the condensed form itself (forward), TransRows its CSC transpose
//           (backward to the input), so one kernel serves both products.
//   srcT  : a dense operand stored transposed, [n_src, ld] with ld a multiple of the vector
//           width and zero padding, so the inner loop is an AXPY of whole vectors over batch.
// Accumulation is always fp32 (fp64 for double inputs); bf16 is stored as raw uint16 bits.

using bf16_raw = uint16_t;

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;
template <typename A> struct VecOf { typedef A type __attribute__((vector_size(64))); };
template <typename T> using vec_t = typename VecOf<acc_t<T>>::type;
template <typename T> constexpr int lanes() { return 64 / int(sizeof(acc_t<T>)); }

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

static inline vec_t<float> vload(const float* p) {
  vec_t<float> v;
  std::memcpy(&v, p, 64);
  return v;
}
static inline vec_t<double> vload(const double* p) {
  vec_t<double> v;
  std::memcpy(&v, p, 64);
  return v;
}
static inline vec_t<float> vload(const bf16_raw* p) {
  typedef uint16_t h16 __attribute__((vector_size(32)));
  typedef uint32_t w16 __attribute__((vector_size(64)));
  h16 h;
  std::memcpy(&h, p, 32);
  const w16 w = __builtin_convertvector(h, w16) << 16;
  return (vec_t<float>)w;
}

template <typename V, typename A> static inline A hsum(V v) {  // tree reduction of one vector
  constexpr int n = int(sizeof(V) / sizeof(A));
  A s[n];
  std::memcpy(s, &v, sizeof(V));
  for (int w = n / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) s[i] += s[i + w];
  return s[0];
}

template <typename T> struct FixedRows {  // the condensed matrix: row r holds [r*k, r*k + k)
  const int32_t* idx;
  const T* val;
  int64_t k;
  int64_t begin(int64_t r) const { return r * k; }
  int64_t end(int64_t r) const { return r * k + k; }
  int32_t col(int64_t p) const { return idx[p]; }
  acc_t<T> value(int64_t p) const { return to_acc(val[p]); }
};

template <typename T> struct TransRows {  // its CSC transpose: row i lists (o, position)
  const int32_t* ptr;
  const int32_t* row;
  const int32_t* pos;
  const T* val;
  int64_t begin(int64_t r) const { return ptr[r]; }
  int64_t end(int64_t r) const { return ptr[r + 1]; }
  int32_t col(int64_t p) const { return row[p]; }
  acc_t<T> value(int64_t p) const { return to_acc(val[pos[p]]); }
};

template <typename T> struct Out {  // destination [nb, ld] row-major, written column r
  T* data;
  int64_t ld;
  const T* bias;  // may be null
};

// out[b0 + u, r] = sum_p val(p) * srcT[col(p), b0 + u] (+ bias[r]) for one batch tile of
// NV vectors, rows [r0, r1). Returns false when an index is outside [0, n_src).
template <int NV, typename T, typename Rows>
static bool axpy_tile(const Rows& rows, const T* srcT, int64_t n_src, int64_t ld, int64_t b0,
                      int64_t nb, const Out<T>& out, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  constexpr int L = lanes<T>();
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    V acc[NV] = {};
    for (int64_t p = rows.begin(r), e = rows.end(r); p < e; ++p) {
      const uint32_t c = uint32_t(rows.col(p));
      if (c >= uint64_t(n_src)) { ok = false; continue; }
      const A v = rows.value(p);
      const T* s = srcT + int64_t(c) * ld + b0;
      for (int t = 0; t < NV; ++t) acc[t] += v * vload(s + t * L);
    }
    A tmp[NV * L];
    std::memcpy(tmp, acc, sizeof(tmp));
    const A add = out.bias ? to_acc(out.bias[r]) : A(0);
    const int64_t n = nb - b0 < NV * L ? nb - b0 : NV * L;
    for (int64_t u = 0; u < n; ++u) out.data[(b0 + u) * out.ld + r] = from_acc<T>(tmp[u] + add);
  }
  return ok;
}

// All batch tiles (up to 4 vectors = 64 fp32 columns each) for rows [r0, r1).
template <typename T, typename Rows>
static bool axpy_rows(const Rows& rows, const T* srcT, int64_t n_src, int64_t ld, int64_t nb,
                      const Out<T>& out, int64_t r0, int64_t r1) {
  constexpr int L = lanes<T>();
  bool ok = true;
  for (int64_t b0 = 0; b0 < nb; b0 += 4 * L) {
    switch ((nb - b0 + L - 1) / L) {
      case 1: ok &= axpy_tile<1>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
      case 2: ok &= axpy_tile<2>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
      case 3: ok &= axpy_tile<3>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
      default: ok &= axpy_tile<4>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
    }
  }
  return ok;
}

// Gather-dot in the natural layout, for small batches: out[b, r] = sum_p val(p) * x[b, col(p)].
template <typename T, typename Rows>
static bool dot_rows(const Rows& rows, const T* x, int64_t ldx, int64_t n_src, int64_t nb,
                     const Out<T>& out, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  uint32_t bad = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const A add = out.bias ? to_acc(out.bias[r]) : A(0);
    for (int64_t b = 0; b < nb; ++b) {
      const T* xb = x + b * ldx;
      const int64_t p0 = rows.begin(r), e = rows.end(r);
      A s = 0;
      int64_t p = p0;
#ifdef CFI_GATHER16
      if constexpr (std::is_same<T, float>::value && std::is_same<Rows, FixedRows<float>>::value) {
        __m512 acc = _mm512_setzero_ps();
        const __m512i lim = _mm512_set1_epi32(int32_t(n_src));
        for (; p + 16 <= e; p += 16) {
          const __m512i c = _mm512_loadu_si512(rows.idx + p);
          const __mmask16 in = _mm512_cmplt_epu32_mask(c, lim);
          bad |= uint32_t(in != 0xffff);
          const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in, c, xb, 4);
          acc = _mm512_fmadd_ps(_mm512_loadu_ps(rows.val + p), g, acc);
        }
        s = _mm512_reduce_add_ps(acc);
      }
#endif
      for (; p < e; ++p) {
        const uint32_t c = uint32_t(rows.col(p));
        const bool in = c < uint64_t(n_src);
        bad |= uint32_t(!in);
        s += rows.value(p) * to_acc(xb[in ? c : 0]);
      }
      out.data[b * out.ld + r] = from_acc<T>(s + add);
    }
  }
  return bad == 0;
}

// Sampled dense-dense product (the weight gradient at the nonzeros only):
// dv[o, j] = sum_b dyT[o, b] * xT[idx[o, j], b], both operands transposed and padded to ld.
template <typename T>
static bool sddmm_rows(const int32_t* idx, int64_t k, const T* dyT, const T* xT, int64_t n_src,
                       int64_t ld, T* dv, int64_t o0, int64_t o1) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  constexpr int L = lanes<T>();
  bool ok = true;
  for (int64_t o = o0; o < o1; ++o) {
    const T* d = dyT + o * ld;
    for (int64_t j = 0; j < k; ++j) {
      const uint32_t c = uint32_t(idx[o * k + j]);
      if (c >= uint64_t(n_src)) { ok = false; dv[o * k + j] = from_acc<T>(A(0)); continue; }
      const T* s = xT + int64_t(c) * ld;
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      int64_t b = 0;
      for (; b + 4 * L <= ld; b += 4 * L) {
        a0 += vload(d + b) * vload(s + b);
        a1 += vload(d + b + L) * vload(s + b + L);
        a2 += vload(d + b + 2 * L) * vload(s + b + 2 * L);
        a3 += vload(d + b + 3 * L) * vload(s + b + 3 * L);
      }
      for (; b < ld; b += L) a0 += vload(d + b) * vload(s + b);
      dv[o * k + j] = from_acc<T>(hsum<V, A>((a0 + a1) + (a2 + a3)));
    }
  }
  return ok;
}

// The same product in the natural layout, for small batches (no transposes worth doing).
template <typename T>
static bool sddmm_rows_natural(const int32_t* idx, int64_t k, const T* dy, int64_t ldy,
                               const T* x, int64_t ldx, int64_t n_src, int64_t nb, T* dv,
                               int64_t o0, int64_t o1) {
  using A = acc_t<T>;
  bool ok = true;
  for (int64_t o = o0; o < o1; ++o) {
    for (int64_t j = 0; j < k; ++j) {
      const uint32_t c = uint32_t(idx[o * k + j]);
      A s = 0;
      if (c < uint64_t(n_src)) {
        for (int64_t b = 0; b < nb; ++b) s += to_acc(dy[b * ldy + o]) * to_acc(x[b * ldx + c]);
      } else {
        ok = false;
      }
      dv[o * k + j] = from_acc<T>(s);
    }
  }
  return ok;
}
