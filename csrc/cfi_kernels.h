// ISA-neutral CPU kernel bodies for the constant fan-in (condensed) sparse linear layer.
//
// This file is deliberately free of system includes and include guards (it relies on
// <cstring>, <type_traits> and <vector> from the includer; it includes only cfi_packed.h):
// cfi_cpu.cpp includes it once per instruction set, each time inside its own namespace and
// `#pragma GCC target` region, so one source yields AVX-512, AVX2 and baseline x86-64 code
// and the binary picks one at run time (it must not crash on CPUs without AVX-512).
// Vectors are native GCC vector extensions (cpu_vec.h): one zmm register under AVX-512, a ymm
// under AVX2, an xmm otherwise; a 64-byte chunk is one, two or four of them. CFI_AVX512 (set by the includer) enables AVX-512
// intrinsics for tiny batches.
//
// Vocabulary (W = condensed values V[n_out, k] with column indices I[n_out, k]):
//   Rows  : "row r of a sparse matrix" = entries p in [begin(r), end(r)) with col(p), val(p).
//           The condensed form itself (forward, fixed k) or its CSC transpose (backward to
//           the input, values pre-gathered into CSC order), so one kernel serves both.
//   srcT  : a dense operand stored transposed and tiled: the batch (zero padded to ld, a
//           multiple of one chunk) is cut into tiles of kTile chunks (256 bytes), and tile t
//           is a contiguous [n_src, w_t] block at srcT + t * kTileElems * n_src. Inner loops
//           run over whole vectors of the batch, and one tile (n_src x 256 B) stays in L2
//           while all rows stream past it (contiguous tiles also spare the TLB).
//   Chunk : what one 64-byte load of srcT becomes: 16 fp32, 8 fp64, or 32 bf16 split into
//           even and odd lanes (two fp32 vectors, one shift and one mask, no shuffles); sums
//           over the batch do not care about lane order, stores undo it with lane().
// Accumulation is always fp32 (fp64 for double inputs); bf16 is handled as raw uint16 bits.

#include "cpu_vec.h"  // acc_t, vec_t, Chunk, to_acc / from_acc, hsum, hsum4

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
constexpr int kTile = 4;      // chunks per batch tile

template <typename T> constexpr int64_t tile_elems() { return kTile * Chunk<T>::elems; }

// sum_p val(p) * tile[col(p), :] of row r over one batch tile of NC chunks (tile: [n_src,
// NC * elems]), into res (accumulators in Chunk lane order). False on an index outside
// [0, n_src).
template <int NC, typename T>
static inline bool axpy_row(const Rows<T>& rows, const T* tile, int64_t n_src, int64_t r,
                            acc_t<T>* res) {
  using V = vec_t<T>;
  using C = Chunk<T>;
  constexpr int NV = NC * C::nvec;
  constexpr int64_t W = NC * C::elems;
  bool ok = true;
  V acc[NV] = {};
  const int64_t e = rows.end(r);
  for (int64_t p = rows.begin(r); p < e; ++p) {
    if (p + kPrefetch < e) {
      const T* f = tile + int64_t(uint32_t(rows.cols[p + kPrefetch])) * W;
      for (int c = 0; c < NC; ++c) __builtin_prefetch(f + c * C::elems);
    }
    const uint32_t col = uint32_t(rows.cols[p]);
    if (col >= uint64_t(n_src)) { ok = false; continue; }
    const acc_t<T> v = to_acc(rows.vals[p]);
    const T* s = tile + int64_t(col) * W;
    CPU_UNROLL
    for (int c = 0; c < NC; ++c) {
      V x[C::nvec];
      C::load(s + c * C::elems, x);
      CPU_UNROLL
      for (int h = 0; h < C::nvec; ++h) acc[c * C::nvec + h] += v * x[h];
    }
  }
  std::memcpy(res, acc, sizeof(acc));
  return ok;
}

constexpr int kRowGroup = 16;  // rows whose results are stored together (one line per sample)

// out[b0 + u, r] = sum_p val(p) * tile[col(p), u] (+ bias[r]) for one batch tile, rows
// [r0, r1). Rows go in groups of kRowGroup and each sample's results are stored as one run:
// one row at a time would write a column of the output, and with a power-of-two row length
// (4 KB for 1024 fp32) every write of the column falls into the same L1 set.
template <int NC, typename T>
static bool axpy_tile(const Rows<T>& rows, const T* tile, int64_t n_src, int64_t b0, int64_t nb,
                      const Out<T>& out, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  using C = Chunk<T>;
  constexpr int64_t W = NC * C::elems;
  bool ok = true;
  const int64_t n = nb - b0 < W ? nb - b0 : W;
  int lane[W];
  for (int64_t u = 0; u < W; ++u) lane[u] = int((u / C::elems) * C::elems + C::lane(int(u % C::elems)));
  A tmp[kRowGroup][W];
  for (int64_t g = r0; g < r1; g += kRowGroup) {
    const int64_t rn = r1 - g < kRowGroup ? r1 - g : kRowGroup;
    A add[kRowGroup];
    for (int64_t j = 0; j < rn; ++j) {
      ok &= axpy_row<NC>(rows, tile, n_src, g + j, tmp[j]);
      add[j] = out.bias ? to_acc(out.bias[g + j]) : A(0);
    }
    for (int64_t u = 0; u < n; ++u) {
      T* dst = out.data + (b0 + u) * out.ld + g;
      for (int64_t j = 0; j < rn; ++j) dst[j] = from_acc<T>(tmp[j][lane[u]] + add[j]);
    }
  }
  return ok;
}

// Rows [r0, r1) over all batch tiles of the tiled transposed operand srcT (batch padded to ld).
template <typename T>
static bool axpy_rows(const Rows<T>& rows, const T* srcT, int64_t n_src, int64_t ld, int64_t nb,
                      const Out<T>& out, int64_t r0, int64_t r1) {
  constexpr int64_t E = Chunk<T>::elems, TW = tile_elems<T>();
  bool ok = true;
  for (int64_t b0 = 0; b0 < ld; b0 += TW) {
    const T* tile = srcT + b0 * n_src;
    switch ((ld - b0 < TW ? ld - b0 : TW) / E) {
      case 1: ok &= axpy_tile<1>(rows, tile, n_src, b0, nb, out, r0, r1); break;
      case 2: ok &= axpy_tile<2>(rows, tile, n_src, b0, nb, out, r0, r1); break;
      case 3: ok &= axpy_tile<3>(rows, tile, n_src, b0, nb, out, r0, r1); break;
      default: ok &= axpy_tile<4>(rows, tile, n_src, b0, nb, out, r0, r1); break;
    }
  }
  return ok;
}

#ifdef CFI_AVX512
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
static inline __m512i load_u8x16(const uint8_t* p) {  // 16 bytes -> 16 int32 lanes
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
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
#ifdef CFI_AVX512
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


// Sampled dense-dense product (the weight gradient at the nonzeros only), one batch tile of NC
// chunks: acc[o - o0, j] (+)= sum_u dy[o, u] * x[idx[o, j], u] over the tile's columns, with
// dy and x tiles as in axpy_tile. The dy row stays in registers across the row's nonzeros and
// a tile of x stays in L2; nonzeros go four at a time for hsum4. False on a bad index.
template <int NC, typename T>
static bool sddmm_tile(const int32_t* idx, int64_t k, const T* dy, const T* x, int64_t n_src,
                       bool first, acc_t<T>* acc, int64_t o0, int64_t o1) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  using C = Chunk<T>;
  constexpr int NV = NC * C::nvec;
  constexpr int64_t W = NC * C::elems;
  bool ok = true;
  auto dot = [&](const V* dd, int64_t p) {  // partial dot of one nonzero, as a vector
    V a = {};
    const uint32_t c = uint32_t(idx[p]);
    if (c >= uint64_t(n_src)) { ok = false; return a; }
    const T* s = x + int64_t(c) * W;
    CPU_UNROLL
    for (int cc = 0; cc < NC; ++cc) {
      V xx[C::nvec];
      C::load(s + cc * C::elems, xx);
      CPU_UNROLL
      for (int h = 0; h < C::nvec; ++h) a += dd[cc * C::nvec + h] * xx[h];
    }
    return a;
  };
  for (int64_t o = o0; o < o1; ++o) {
    V dd[NV];
    CPU_UNROLL
    for (int cc = 0; cc < NC; ++cc) C::load(dy + o * W + cc * C::elems, dd + cc * C::nvec);
    A* out = acc + (o - o0) * k;
    const int32_t* row = idx + o * k;
    int64_t j = 0;
    for (; j + 4 <= k; j += 4) {
      for (int64_t f = j + 4; f < j + 8 && f < k; ++f)  // next quad: rows are random
        for (int cc = 0; cc < NC; ++cc)
          __builtin_prefetch(x + int64_t(uint32_t(row[f])) * W + cc * C::elems);
      const V a[4] = {dot(dd, o * k + j), dot(dd, o * k + j + 1), dot(dd, o * k + j + 2),
                      dot(dd, o * k + j + 3)};
      A part[4];
      hsum4(a, part);
      for (int q = 0; q < 4; ++q) out[j + q] = first ? part[q] : out[j + q] + part[q];
    }
    for (; j < k; ++j) {
      const A part = hsum<V, A>(dot(dd, o * k + j));
      out[j] = first ? part : out[j] + part;
    }
  }
  return ok;
}

// dv[o, j] = sum_b dyT[o, b] * xT[idx[o, j], b] for rows [o0, o1): dyT and xT tiled and
// transposed (batch ld, as for axpy_rows); rows go in blocks whose fp32 partial sums stay
// in L2 while the batch tiles sweep.
template <typename T>
static bool sddmm_rows(const int32_t* idx, int64_t k, const T* dyT, int64_t n_out, const T* xT,
                       int64_t n_src, int64_t ld, T* dv, int64_t o0, int64_t o1) {
  using A = acc_t<T>;
  constexpr int64_t E = Chunk<T>::elems, TW = tile_elems<T>(), kRows = 64;
  std::vector<A> acc(size_t(kRows * k));
  bool ok = true;
  for (int64_t r0 = o0; r0 < o1; r0 += kRows) {
    const int64_t r1 = r0 + kRows < o1 ? r0 + kRows : o1;
    for (int64_t b0 = 0; b0 < ld; b0 += TW) {
      const T* dy = dyT + b0 * n_out;
      const T* x = xT + b0 * n_src;
      const bool first = b0 == 0;
      switch ((ld - b0 < TW ? ld - b0 : TW) / E) {
        case 1: ok &= sddmm_tile<1>(idx, k, dy, x, n_src, first, acc.data(), r0, r1); break;
        case 2: ok &= sddmm_tile<2>(idx, k, dy, x, n_src, first, acc.data(), r0, r1); break;
        case 3: ok &= sddmm_tile<3>(idx, k, dy, x, n_src, first, acc.data(), r0, r1); break;
        default: ok &= sddmm_tile<4>(idx, k, dy, x, n_src, first, acc.data(), r0, r1); break;
      }
    }
    for (int64_t p = 0; p < (r1 - r0) * k; ++p) dv[r0 * k + p] = from_acc<T>(acc[p]);
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

#include "cfi_packed.h"  // packed_rows: batch <= 4 inference (register permutes)

// Entry points for the glue, as static members so it can pick an instruction set by type;
// SpmmProblem, SddmmProblem and PackedProblem are defined by the includer.
struct Kernels {
  template <typename T> static bool spmm_part(const SpmmProblem<T>& q, int64_t r0, int64_t r1) {
    const Out<T> out{q.out, q.ld_out, q.bias};
    const Rows<T> rows{q.ptr, q.cols, q.vals, q.k};
    return q.transposed ? axpy_rows(rows, q.src, q.n_src, q.ld_src, q.nb, out, r0, r1)
                        : dot_rows(rows, q.src, q.ld_src, q.n_src, q.nb, out, r0, r1);
  }

  template <typename T> static void packed_part(const PackedProblem<T>& q, int64_t g0, int64_t g1) {
    packed_rows(q.pvals, q.pidx, q.counts, q.nblk, g0, g1, q.group_slot[g0], q.xpad,
                q.y + g0 * 16);
  }

  template <typename T> static bool sddmm_part(const SddmmProblem<T>& q, int64_t o0, int64_t o1) {
    return q.transposed
               ? sddmm_rows(q.idx, q.k, q.dy, q.n_out, q.x, q.n_src, q.ld_x, q.dv, o0, o1)
               : sddmm_rows_natural(q.idx, q.k, q.dy, q.ld_dy, q.x, q.ld_x, q.n_src, q.nb, q.dv,
                                    o0, o1);
  }

  template <typename T> static T round(acc_t<T> v) { return from_acc<T>(v); }
};
