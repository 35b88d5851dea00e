// ISA-neutral CPU kernel bodies of the direct sparse convolution (sconv_cpu.cpp).
//
// Like cfi_kernels.h this file has no include guard: sconv_cpu.cpp includes it once per
// instruction set, inside its own namespace and `#pragma GCC target` region.
//
// Layout ("units"): activations live in buffers [chunk][plane][row][col] of 64-byte units,
// one unit holding the same (plane, row, col) of E = Chunk<T>::elems consecutive samples
// (16 fp32, 8 fp64, 32 bf16). Source planes carry zero margins, so every tap of the kernel
// is one constant offset (in units) from an output position's home in the source, and one
// nonzero weight becomes one vector FMA per output unit: no im2col, no gathers, aligned
// loads. Strided convolutions are split into stride phases by the glue, which makes them
// stride-1 problems over more (smaller) planes.
//
//   plane AXPY   out[o][pos] = sum_e val(e) * src[off(e) + home(pos)] over the entries e of
//                out plane o (a CSR list): the forward (out = y, src = x planes) and the
//                gradient to the input (out = dx phase planes, src = dy with margins).
//   plane SDDMM  acc[o, slot(e)] += sum_pos dy[o][pos] * x[off(e) + home(pos)]: the weight
//                gradient at the nonzeros only.
// A tile of NT output units stays in registers across all entries of its plane; positions
// are cut in blocks whose source band (all planes) stays in L2.

#include "cpu_vec.h"  // acc_t, vec_t, Chunk, to_acc / from_acc, hsum, hsum4

// A vector store that bypasses the caches where the includer sets SCONV_STREAM (the AVX-512
// and AVX2 builds; a plain store otherwise);
// conv_stream_fence orders them before the results are read by another thread.
template <typename V> static inline void conv_stream(V* p, const V& v) {
#if defined(SCONV_STREAM) && CPU_VEC_BYTES == 64
  __m512i w;
  std::memcpy(&w, &v, 64);
  _mm512_stream_si512(reinterpret_cast<__m512i*>(p), w);
#elif defined(SCONV_STREAM) && CPU_VEC_BYTES == 32
  __m256i w;
  std::memcpy(&w, &v, 32);
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), w);
#else
  *p = v;
#endif
}
static inline void conv_stream_fence() {
#if defined(SCONV_STREAM)
  _mm_sfence();
#endif
}

// Registers a tile keeps: 8 vectors of accumulators in the AXPY (of 16 on AVX2 and SSE, 32
// on AVX-512), SCONV_SDDMM_VECS of dy in the weight gradient (16 where AVX-512 has room).
#ifndef SCONV_SDDMM_VECS
#define SCONV_SDDMM_VECS 8
#endif
template <typename T> constexpr int tile_units(int vecs) {
  return vecs / Chunk<T>::nvec > 0 ? vecs / Chunk<T>::nvec : 1;
}
template <typename T> constexpr int conv_tile() { return tile_units<T>(8); }  // units per tile

template <typename T> struct ConvAxpy {
  // Entries of out plane o whose source channel lies in band b are
  // [ptr[o * nband + b], ptr[o * nband + b + 1]) (a band's source units stay in L1).
  const int64_t* ptr;      // [n_out * nband + 1]
  int64_t nband;
  const int32_t* offs;     // [nnz] source offset of each entry (units, from a chunk's base)
  const acc_t<T>* vals;    // [nnz]
  const T* src;
  int64_t src_chunk;       // units per chunk of the source
  int64_t src_cols;        // units per source row
  int64_t n_out, orows, ocols;  // out planes and their grid
  // Results: units of accumulators res [chunk][n_out][orows * ocols][nvec vectors], which
  // the glue scatters to NCHW plane by plane (stores straight from the kernel would touch
  // one page per sample and out plane of a block: TLB-bound).
  vec_t<T>* res;
};

// One tile of NT output units whose homes in the source are sp[0..NT), over the entries
// [p, e): the accumulators start from in (or zero when fresh); the first n units go to out,
// with non-temporal stores when stream (the result buffer is read back only after the whole
// call: caching it would cost a read for ownership of every line).
template <int NT, typename T>
static inline void conv_axpy_tile(const ConvAxpy<T>& q, int64_t p, int64_t e,
                                  const T* const* sp, const vec_t<T>* in, bool fresh,
                                  vec_t<T>* out, int n, bool stream) {
  using V = vec_t<T>;
  using C = Chunk<T>;
  constexpr int NV = NT * C::nvec;
  V acc[NV];
  CPU_UNROLL
  for (int k = 0; k < NV; ++k) acc[k] = fresh ? V{} : in[k];
  for (; p < e; ++p) {
    const int64_t off = int64_t(q.offs[p]) * C::elems;
    const acc_t<T> v = q.vals[p];
    CPU_UNROLL
    for (int k = 0; k < NT; ++k) {
      V x[C::nvec];
      C::load(sp[k] + off, x);
      CPU_UNROLL
      for (int h = 0; h < C::nvec; ++h) acc[k * C::nvec + h] += v * x[h];
    }
  }
  if (!stream) {
    CPU_UNROLL
    for (int k = 0; k < NV; ++k) out[k] = acc[k];
    return;
  }
  CPU_UNROLL
  for (int k = 0; k < NV; ++k)
    if (k < n * C::nvec) conv_stream(out + k, acc[k]);
}

constexpr int64_t kConvBlock = 16;  // output positions per task

// Homes in a source of row length src_cols of output positions [p0, p1) (grid of ocols).
static inline void conv_homes(int64_t p0, int64_t p1, int64_t ocols, int64_t src_cols,
                              int64_t* home) {
  for (int64_t p = p0; p < p1; ++p) home[p - p0] = (p / ocols) * src_cols + p % ocols;
}

// All out planes, positions [p0, p1) (p1 - p0 <= kConvBlock) of one batch chunk. Bands of
// source channels in turn (their units stay in L1 while every out plane reads them); the
// accumulators of all out planes wait in acc [n_out][kConvBlock units] between bands (L2).
template <typename T>
static void conv_axpy_block(const ConvAxpy<T>& q, int64_t chunk, int64_t p0, int64_t p1,
                            vec_t<T>* acc) {
  constexpr int NT = conv_tile<T>(), E = Chunk<T>::elems, NV = Chunk<T>::nvec;
  int64_t home[kConvBlock];
  conv_homes(p0, p1, q.ocols, q.src_cols, home);
  const T* src = q.src + chunk * q.src_chunk * E;
  for (int64_t b = 0; b < q.nband; ++b) {
    const bool first = b == 0, last = b == q.nband - 1;
    for (int64_t o = 0; o < q.n_out; ++o) {
      const int64_t p = q.ptr[o * q.nband + b], e = q.ptr[o * q.nband + b + 1];
      if (p == e && !first && !last) continue;
      for (int64_t t0 = p0; t0 < p1; t0 += NT) {
        const int n = int(p1 - t0 < NT ? p1 - t0 : NT);
        const T* sp[NT];
        for (int k = 0; k < NT; ++k) sp[k] = src + home[t0 - p0 + (k < n ? k : n - 1)] * E;
        vec_t<T>* io = acc + (o * kConvBlock + (t0 - p0)) * NV;  // between bands
        vec_t<T>* res = q.res + ((chunk * q.n_out + o) * q.orows * q.ocols + t0) * NV;
        conv_axpy_tile<NT>(q, p, e, sp, io, first, last ? res : io, n, last);
      }
    }
  }
  conv_stream_fence();
}

template <typename T> struct ConvSddmm {
  const int64_t* ptr;      // [n_out * nband + 1] entries of (out plane, source band), as ConvAxpy
  int64_t nband;
  const int32_t* offs;     // [nnz] source offset (units) of each entry in the x layout
  const int32_t* slot;     // [nnz] column of the entry in the [n_out, k] result
  const T* dy;             // [chunk][n_out][orows * ocols] units
  const T* x;              // source layout of the forward
  int64_t x_chunk, x_cols;
  int64_t dy_plane;        // units per dy plane (orows * ocols and a pad)
  int64_t nchunk, n_out, orows, ocols, k;
  acc_t<T>* acc;           // [n_out, k] partial sums, zeroed by the caller
};

// Where the units of a weight-gradient tile live in the source: any homes (one pointer per
// unit), or two runs of NT / 2 consecutive units (a tile within one row, or two rows of 8:
// every load is then a constant offset from two pointers, which frees the registers the
// pointer list would spill to the stack and reload on every entry).
template <typename T> struct AnyHomes {
  const T* const* sp;
  template <int NT> const T* at(int k) const { return sp[k]; }
};
template <typename T> struct TwoRuns {
  const T* s0;
  const T* s1;
  template <int NT> const T* at(int k) const {
    return k < NT / 2 ? s0 + k * Chunk<T>::elems : s1 + (k - NT / 2) * Chunk<T>::elems;
  }
};

// Partial dot of one entry over a tile, as a vector (dd: the tile of dy in registers).
template <int NT, typename T, typename S>
static inline vec_t<T> conv_dot(const vec_t<T>* dd, const S& src, int64_t off) {
  using V = vec_t<T>;
  using C = Chunk<T>;
  V a = {}, b = {};
  CPU_UNROLL
  for (int k = 0; k < NT; ++k) {
    V x[C::nvec];
    C::load(src.template at<NT>(k) + off, x);
    CPU_UNROLL
    for (int h = 0; h < C::nvec; ++h) {
      if ((k * C::nvec + h) & 1) b += dd[k * C::nvec + h] * x[h];
      else a += dd[k * C::nvec + h] * x[h];
    }
  }
  return a + b;
}

// Entries [p, e) of out plane o over one tile (n units of dy at dyp, sources src): the dy
// tile stays in registers, entries go four at a time through hsum4.
template <int NT, typename T, typename S>
static inline void conv_sddmm_tile(const ConvSddmm<T>& q, int64_t o, int64_t p, int64_t e,
                                   const S& src, const T* dyp, int n) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  using C = Chunk<T>;
  constexpr int E = C::elems, NV = NT * C::nvec;
  V dd[NV];
  CPU_UNROLL
  for (int k = 0; k < NT; ++k) {  // fixed trip count: a variable one became a rep movs
    if (k < n) C::load(dyp + k * E, dd + k * C::nvec);
    else {
      CPU_UNROLL
      for (int h = 0; h < C::nvec; ++h) dd[k * C::nvec + h] = V{};
    }
  }
  A* out = q.acc + o * q.k;
  for (; p + 4 <= e; p += 4) {
    const V a[4] = {conv_dot<NT, T>(dd, src, int64_t(q.offs[p]) * E),
                    conv_dot<NT, T>(dd, src, int64_t(q.offs[p + 1]) * E),
                    conv_dot<NT, T>(dd, src, int64_t(q.offs[p + 2]) * E),
                    conv_dot<NT, T>(dd, src, int64_t(q.offs[p + 3]) * E)};
    A part[4];
    hsum4(a, part);
    for (int r = 0; r < 4; ++r) out[q.slot[p + r]] += part[r];
  }
  for (; p < e; ++p) out[q.slot[p]] += hsum<V, A>(conv_dot<NT, T>(dd, src, int64_t(q.offs[p]) * E));
}

// One tile, all bands, out planes [o0, o1).
template <int NT, typename T, typename S>
static void conv_sddmm_bands(const ConvSddmm<T>& q, int64_t o0, int64_t o1, int64_t chunk,
                             int64_t t0, const S& src, int n) {
  constexpr int E = Chunk<T>::elems;
  for (int64_t b = 0; b < q.nband; ++b) {  // a band's source units stay in cache
    for (int64_t o = o0; o < o1; ++o) {
      const int64_t p = q.ptr[o * q.nband + b], e = q.ptr[o * q.nband + b + 1];
      const T* dyp = q.dy + ((chunk * q.n_out + o) * q.dy_plane + t0) * E;
      if (p < e) conv_sddmm_tile<NT>(q, o, p, e, src, dyp, n);
    }
  }
}

// Units per weight-gradient tile: on AVX-512 twice the AXPY's (16 dy vectors in registers),
// which halves the horizontal sums and result updates per FMA.
template <typename T> constexpr int kSddmmTile = tile_units<T>(SCONV_SDDMM_VECS);

// Weight gradient of out planes [o0, o1): every chunk and tile, bands of source channels in
// turn, each (out plane, band) list against the plane's dy tile.
template <typename T> static void conv_sddmm_rows(const ConvSddmm<T>& q, int64_t o0, int64_t o1) {
  constexpr int NT = kSddmmTile<T>, E = Chunk<T>::elems;
  const int64_t np = q.orows * q.ocols;
  int64_t home[NT];
  for (int64_t chunk = 0; chunk < q.nchunk; ++chunk) {
    const T* xs = q.x + chunk * q.x_chunk * E;
    for (int64_t t0 = 0; t0 < np; t0 += NT) {
      const int n = int(np - t0 < NT ? np - t0 : NT);
      conv_homes(t0, t0 + n, q.ocols, q.x_cols, home);
      bool runs = n == NT;
      for (int k = 1; k < NT && runs; ++k)
        runs = k == NT / 2 || home[k] == home[k - 1] + 1;
      if (runs) {
        conv_sddmm_bands<NT>(q, o0, o1, chunk, t0,
                             TwoRuns<T>{xs + home[0] * E, xs + home[NT / 2] * E}, n);
        continue;
      }
      const T* sp[NT];
      for (int k = 0; k < NT; ++k) sp[k] = xs + home[k < n ? k : n - 1] * E;
      conv_sddmm_bands<NT>(q, o0, o1, chunk, t0, AnyHomes<T>{sp}, n);
    }
  }
}

// Entry points for the glue (static members, so it picks an instruction set by type).
struct ConvKernels {
  template <typename T> using Axpy = ConvAxpy<T>;
  template <typename T> using Sddmm = ConvSddmm<T>;
  template <typename T> using Vec = vec_t<T>;
  template <typename T> static int lane(int e) { return Chunk<T>::lane(e); }
  template <typename T> static constexpr int sddmm_tile() { return kSddmmTile<T>; }
  template <typename T>
  static void axpy(const ConvAxpy<T>& q, int64_t chunk, int64_t p0, int64_t p1, void* acc) {
    conv_axpy_block(q, chunk, p0, p1, static_cast<vec_t<T>*>(acc));
  }
  template <typename T> static void sddmm(const ConvSddmm<T>& q, int64_t o0, int64_t o1) {
    conv_sddmm_rows(q, o0, o1);
  }
};
