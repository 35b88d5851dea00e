// ISA-neutral CPU kernel bodies for the constant fan-in (condensed) sparse linear layer.
//
// This file is deliberately free of includes and include guards: cfi_cpu.cpp includes it
// once per instruction set, each time inside its own namespace and `#pragma GCC target`
// region, so one source yields AVX-512, AVX2 and baseline x86-64 code and the binary picks
// one at run time (it must not crash on CPUs without AVX-512). Vectors are GCC vector
// extensions of 64 bytes: a zmm register under AVX-512, two ymm under AVX2, four xmm
// otherwise. CFI_GATHER16 (set by the includer) enables AVX-512 gathers for tiny batches.
//
// Vocabulary (W = condensed values V[n_out, k] with column indices I[n_out, k]):
//   Rows  : "row r of a sparse matrix" = entries p in [begin(r), end(r)) with col(p), val(p).
//           The condensed form itself (forward, fixed k) or its CSC transpose (backward to
//           the input, values pre-gathered into CSC order), so one kernel serves both.
//   srcT  : a dense operand stored transposed, [n_src, ld], ld a multiple of one chunk and
//           zero padded, so inner loops run over whole vectors of the batch.
//   Chunk : what one 64-byte load of srcT becomes: 16 fp32, 8 fp64, or 32 bf16 split into
//           even and odd lanes (two fp32 vectors, one shift and one mask, no shuffles); sums
//           over the batch do not care about lane order, stores undo it with lane().
// Accumulation is always fp32 (fp64 for double inputs); bf16 is handled as raw uint16 bits.

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

template <typename T> struct Rows {  // fixed k when ptr is null, else CSC row pointers
  const int32_t* ptr;
  const int32_t* cols;
  const T* vals;
  int64_t k;
  int64_t begin(int64_t r) const { return ptr ? ptr[r] : r * k; }
  int64_t end(int64_t r) const { return ptr ? ptr[r + 1] : r * k + k; }
};

template <typename T> struct Out {  // destination [nb, ld] row-major, written column r
  T* data;
  int64_t ld;
  const T* bias;  // may be null
};

constexpr int kPrefetch = 6;  // entries ahead: rows are random, the hardware cannot guess them

// out[b0 + u, r] = sum_p val(p) * srcT[col(p), b0 + u] (+ bias[r]) for one batch tile of NC
// chunks, rows [r0, r1). Returns false when an index is outside [0, n_src).
template <int NC, typename T>
static bool axpy_tile(const Rows<T>& rows, const T* srcT, int64_t n_src, int64_t ld, int64_t b0,
                      int64_t nb, const Out<T>& out, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  using C = Chunk<T>;
  constexpr int NV = NC * C::nvec;
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    V acc[NV] = {};
    const int64_t e = rows.end(r);
    for (int64_t p = rows.begin(r); p < e; ++p) {
      if (p + kPrefetch < e) {
        const char* f = reinterpret_cast<const char*>(srcT + int64_t(uint32_t(rows.cols[p + kPrefetch])) * ld + b0);
        for (int c = 0; c < NC; ++c) __builtin_prefetch(f + 64 * c);
      }
      const uint32_t col = uint32_t(rows.cols[p]);
      if (col >= uint64_t(n_src)) { ok = false; continue; }
      const A v = to_acc(rows.vals[p]);
      const T* s = srcT + int64_t(col) * ld + b0;
      for (int c = 0; c < NC; ++c) {
        V x[C::nvec];
        C::load(s + c * C::elems, x);
        for (int h = 0; h < C::nvec; ++h) acc[c * C::nvec + h] += v * x[h];
      }
    }
    A tmp[NV * 64 / sizeof(A)];
    std::memcpy(tmp, acc, sizeof(acc));
    const A add = out.bias ? to_acc(out.bias[r]) : A(0);
    const int64_t n = nb - b0 < NC * C::elems ? nb - b0 : NC * C::elems;
    for (int64_t u = 0; u < n; ++u) {
      const int64_t c = u / C::elems, lane = C::lane(int(u % C::elems));
      out.data[(b0 + u) * out.ld + r] = from_acc<T>(tmp[c * C::elems + lane] + add);
    }
  }
  return ok;
}

// Rows [r0, r1) over all batch tiles of up to 4 chunks (256 bytes of each srcT row): a tile
// of srcT (n_src x 256 B) stays in L2 while all rows stream past it.
template <typename T>
static bool axpy_rows(const Rows<T>& rows, const T* srcT, int64_t n_src, int64_t ld, int64_t nb,
                      const Out<T>& out, int64_t r0, int64_t r1) {
  constexpr int E = Chunk<T>::elems;
  bool ok = true;
  for (int64_t b0 = 0; b0 < nb; b0 += 4 * E) {
    switch ((nb - b0 + E - 1) / E) {
      case 1: ok &= axpy_tile<1>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
      case 2: ok &= axpy_tile<2>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
      case 3: ok &= axpy_tile<3>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
      default: ok &= axpy_tile<4>(rows, srcT, n_src, ld, b0, nb, out, r0, r1); break;
    }
  }
  return ok;
}

#ifdef CFI_GATHER16
// 16 entries of one row at once: sum_p val(p) * xb[col(p)] with AVX-512 gathers.
static inline __m512 gather16(const float* xb, __m512i c, __mmask16 in) {
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in, c, xb, 4);
}
static inline __m512 gather16(const bf16_raw* xb, __m512i c, __mmask16 in) {
  // 32-bit gather at xb + 2c - 2: the high half is xb[c], already in fp32 position. Lanes with
  // c == 0 would read before the buffer, so they take xb[0] from the pass-through operand.
  const __m512 x0 = _mm512_set1_ps(to_acc(xb[0]));
  const __mmask16 m = in & _mm512_test_epi32_mask(c, c);
  const __m512i g = _mm512_mask_i32gather_epi32(_mm512_castps_si512(x0), m, c,
                                                reinterpret_cast<const char*>(xb) - 2, 2);
  return _mm512_castsi512_ps(_mm512_and_si512(g, _mm512_set1_epi32(int32_t(0xffff0000u))));
}
static inline __m512 load16(const float* v) { return _mm512_loadu_ps(v); }
static inline __m512 load16(const bf16_raw* v) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif

// Gather-dot in the natural layout, for small batches: out[b, r] = sum_p val(p) * x[b, col(p)].
template <typename T>
static bool dot_rows(const Rows<T>& rows, const T* x, int64_t ldx, int64_t n_src, int64_t nb,
                     const Out<T>& out, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  uint32_t bad = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const A add = out.bias ? to_acc(out.bias[r]) : A(0);
    const int64_t p0 = rows.begin(r), e = rows.end(r);
    for (int64_t b = 0; b < nb; ++b) {
      const T* xb = x + b * ldx;
      A s = 0;
      int64_t p = p0;
#ifdef CFI_GATHER16
      if constexpr (!std::is_same<T, double>::value) {
        __m512 acc = _mm512_setzero_ps();
        const __m512i lim = _mm512_set1_epi32(int32_t(n_src));
        for (; p + 16 <= e; p += 16) {
          const __m512i c = _mm512_loadu_si512(rows.cols + p);
          const __mmask16 in = _mm512_cmplt_epu32_mask(c, lim);
          bad |= uint32_t(in != 0xffff);
          acc = _mm512_fmadd_ps(load16(rows.vals + p), gather16(xb, c, in), acc);
        }
        s = _mm512_reduce_add_ps(acc);
      }
#endif
      for (; p < e; ++p) {
        const uint32_t c = uint32_t(rows.cols[p]);
        const bool in = c < uint64_t(n_src);
        bad |= uint32_t(!in);
        s += to_acc(rows.vals[p]) * to_acc(xb[in ? c : 0]);
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
  using C = Chunk<T>;
  constexpr int E = C::elems;
  bool ok = true;
  for (int64_t o = o0; o < o1; ++o) {
    const T* d = dyT + o * ld;
    for (int64_t j = 0; j < k; ++j) {
      if (j + 1 < k) {  // next row: one line per chunk, the hardware prefetcher follows
        const char* f = reinterpret_cast<const char*>(xT + int64_t(uint32_t(idx[o * k + j + 1])) * ld);
        __builtin_prefetch(f);
        __builtin_prefetch(f + 64);
      }
      const uint32_t c = uint32_t(idx[o * k + j]);
      if (c >= uint64_t(n_src)) { ok = false; dv[o * k + j] = from_acc<T>(A(0)); continue; }
      const T* s = xT + int64_t(c) * ld;
      V a[2 * C::nvec] = {};
      int64_t b = 0;
      for (; b + 2 * E <= ld; b += 2 * E) {
        V dd[2 * C::nvec], xx[2 * C::nvec];
        C::load(d + b, dd);
        C::load(d + b + E, dd + C::nvec);
        C::load(s + b, xx);
        C::load(s + b + E, xx + C::nvec);
        for (int h = 0; h < 2 * C::nvec; ++h) a[h] += dd[h] * xx[h];
      }
      for (; b < ld; b += E) {
        V dd[C::nvec], xx[C::nvec];
        C::load(d + b, dd);
        C::load(s + b, xx);
        for (int h = 0; h < C::nvec; ++h) a[h] += dd[h] * xx[h];
      }
      V t = a[0];
      for (int h = 1; h < 2 * C::nvec; ++h) t += a[h];
      dv[o * k + j] = from_acc<T>(hsum<V, A>(t));
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

// Entry points for the glue; SpmmProblem / SddmmProblem are defined by the includer.
template <typename T> bool spmm_part(const SpmmProblem<T>& q, int64_t r0, int64_t r1) {
  const Out<T> out{q.out, q.ld_out, q.bias};
  const Rows<T> rows{q.ptr, q.cols, q.vals, q.k};
  return q.transposed ? axpy_rows(rows, q.src, q.n_src, q.ld_src, q.nb, out, r0, r1)
                      : dot_rows(rows, q.src, q.ld_src, q.n_src, q.nb, out, r0, r1);
}

template <typename T> bool sddmm_part(const SddmmProblem<T>& q, int64_t o0, int64_t o1) {
  return q.transposed
             ? sddmm_rows(q.idx, q.k, q.dy, q.x, q.n_src, q.ld_x, q.dv, o0, o1)
             : sddmm_rows_natural(q.idx, q.k, q.dy, q.ld_dy, q.x, q.ld_x, q.n_src, q.nb, q.dv, o0, o1);
}
