// Unit layout of the direct sparse convolution (sconv_cpu.cpp): copies of NCHW activations
// into batch-chunk units with stride phases and zero margins (to_units), the result pass
// back to NCHW (from_units), and the per-thread workspaces they use. Included by
// sconv_cpu.cpp inside its namespace, after the ATen headers and the kernel namespaces
// (it uses base::Chunk, base::from_acc, conv_acc_t, active_isa).
#pragma once

// ---------------------------------------------------------------- unit layout copies
// Where plane p of a [B, P, H, W] tensor lives in a unit buffer [chunk][P * nph][rows][cols]:
// element (u, v) goes to phase phase[(u % sh) * sw + v % sw] (if >= 0), row u / sh + r0,
// column v / sw + c0 (clipped to the grid). Each plane group is followed by pad zero units.
struct UnitGrid {
  int64_t sh, sw;
  const int64_t* phase;
  int64_t nph, rows, cols, r0, c0, pad = 0;
};

const int64_t kNoPhase[1] = {0};
UnitGrid plain_grid(int64_t rows, int64_t cols, int64_t r0, int64_t c0) {
  return {1, 1, kNoPhase, 1, rows, cols, r0, c0};
}
UnitGrid phase_grid(const ConvGeom& g, int64_t rows, int64_t cols, int64_t r0, int64_t c0) {
  return {g.sh, g.sw, g.phase.data(), g.nph, rows, cols, r0, c0};
}

template <typename F> void by_size(int64_t size, const F& f) {
  if (size == 2) f(uint16_t{});
  else if (size == 4) f(uint32_t{});
  else f(uint64_t{});
}

// Column table of a grid: for row phase a and column v, the unit offset within a plane group
// (phase plane * rows * cols + column), or -1 when the grid does not hold the element.
std::vector<int64_t> column_table(const UnitGrid& q, int64_t w) {
  std::vector<int64_t> t(size_t(q.sh * w));
  for (int64_t a = 0; a < q.sh; ++a)
    for (int64_t v = 0; v < w; ++v) {
      const int64_t ph = q.phase[a * q.sw + v % q.sw], c = v / q.sw + q.c0;
      t[size_t(a * w + v)] = ph < 0 || c >= q.cols ? -1 : ph * q.rows * q.cols + c;
    }
  return t;
}

// f(lane pointers, n lanes, group base unit) for every (chunk, plane) of a [B, P, H, W]
// tensor in parallel; the group of plane p of chunk ch starts at unit (ch * P + p) * nph * rows * cols.
template <typename U, typename F>
void for_planes(U* nchw, int64_t b, int64_t planes, int64_t hw, int64_t e, int64_t group,
                const F& f) {
  const int64_t nchunk = ceil_div(b, e);
  at::parallel_for(0, nchunk * planes, 1, [&](int64_t t0, int64_t t1) {
    U* lanes[32];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ch = t / planes, p = t % planes, n = std::min(e, b - ch * e);
      for (int64_t l = 0; l < n; ++l) lanes[l] = nchw + ((ch * e + l) * planes + p) * hw;
      f(lanes, n, (ch * planes + p) * group);
    }
  });
}

// Per-thread buffers reused across calls (slot: which one): a fresh allocation of this
// size is mapped anew by malloc and every page faults again on each call; that fault
// handling was ~half of a 202-channel 32x32 forward. Internal buffers only, never returned.
at::Tensor workspace(int slot, int64_t numel, at::ScalarType dtype) {
  thread_local std::array<at::Tensor, 3> ws;
  const int64_t bytes = numel * int64_t(c10::elementSize(dtype));
  at::Tensor& w = ws[size_t(slot)];
  if (!w.defined() || w.numel() < bytes) {
    w = at::Tensor();  // free the old one first
    w = at::empty({bytes}, at::TensorOptions(at::kByte));
  }
  return w.narrow(0, 0, bytes).view(dtype);
}

#ifdef SCONV_MULTI_ISA
#include "cpu_transpose.h"  // transpose16

// Row off of 16 fp32 lanes (lanes past n read as zero) into units with 16 x 16 register
// transposes: column v becomes the unit at dst_row + ct[v] * 16 (dropped where ct[v] < 0).
__attribute__((target("avx512f"))) void row_to_units16(const float* const* lanes, int64_t n,
                                                       int64_t off, int64_t w,
                                                       const int64_t* ct, float* dst_row) {
  for (int64_t v0 = 0; v0 < w; v0 += 16) {
    const int64_t nc = std::min<int64_t>(16, w - v0);
    const __mmask16 m = __mmask16((1u << nc) - 1u);
    __m512 r[16];
    for (int l = 0; l < 16; ++l)
      r[l] = l < n ? _mm512_maskz_loadu_ps(m, lanes[l] + off + v0) : _mm512_setzero_ps();
    transpose16(r);
    for (int j = 0; j < nc; ++j)
      if (ct[v0 + j] >= 0) _mm512_storeu_ps(dst_row + ct[v0 + j] * 16, r[j]);
  }
}

// The inverse for one plane of np fp32 units: 16 positions at a time, transposed, each of
// the n lanes stored as one masked vector where the positions are consecutive in NCHW.
__attribute__((target("avx512f"))) void units_to_plane16(const float* u, int64_t np,
                                                         const int64_t* po, int64_t n,
                                                         float* base, int64_t ss) {
  for (int64_t p0 = 0; p0 < np; p0 += 16) {
    const int64_t cnt = std::min<int64_t>(16, np - p0);
    __m512 r[16];
    for (int k = 0; k < 16; ++k)
      r[k] = k < cnt ? _mm512_loadu_ps(u + (p0 + k) * 16) : _mm512_setzero_ps();
    transpose16(r);  // r[l]: lane l at positions p0 .. p0 + 15
    bool consecutive = po[p0] >= 0;
    for (int64_t k = 1; k < cnt && consecutive; ++k) consecutive = po[p0 + k] == po[p0] + k;
    if (consecutive) {
      const __mmask16 m = __mmask16((1u << cnt) - 1u);
      for (int64_t l = 0; l < n; ++l) _mm512_mask_storeu_ps(base + l * ss + po[p0], m, r[l]);
      continue;
    }
    alignas(64) float t[16][16];
    for (int l = 0; l < 16; ++l) _mm512_store_ps(t[l], r[l]);
    for (int64_t l = 0; l < n; ++l)
      for (int64_t k = 0; k < cnt; ++k)
        if (po[p0 + k] >= 0) base[l * ss + po[p0 + k]] = t[l][k];
  }
}

// AVX2 versions of the two copies: a unit's 16 lanes are two 8 x 8 transposes (lanes 0-7
// and 8-15), each position block is 8 wide; masks are integer vectors.
__attribute__((target("avx2"))) inline __m256i first_n8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

__attribute__((target("avx2"))) void row_to_units8(const float* const* lanes, int64_t n,
                                                   int64_t off, int64_t w, const int64_t* ct,
                                                   float* dst_row) {
  for (int64_t v0 = 0; v0 < w; v0 += 8) {
    const int64_t nc = std::min<int64_t>(8, w - v0);
    const __m256i m = first_n8(nc);
    for (int half = 0; half < 2; ++half) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const int l = half * 8 + i;
        r[i] = l < n ? _mm256_maskload_ps(lanes[l] + off + v0, m) : _mm256_setzero_ps();
      }
      transpose8(r);
      for (int j = 0; j < nc; ++j)
        if (ct[v0 + j] >= 0) _mm256_storeu_ps(dst_row + ct[v0 + j] * 16 + half * 8, r[j]);
    }
  }
}

__attribute__((target("avx2"))) void units_to_plane8(const float* u, int64_t np,
                                                     const int64_t* po, int64_t n, float* base,
                                                     int64_t ss) {
  for (int64_t p0 = 0; p0 < np; p0 += 8) {
    const int64_t cnt = std::min<int64_t>(8, np - p0);
    bool consecutive = po[p0] >= 0;
    for (int64_t k = 1; k < cnt && consecutive; ++k) consecutive = po[p0 + k] == po[p0] + k;
    for (int half = 0; half < 2 && half * 8 < n; ++half) {
      __m256 r[8];
      for (int k = 0; k < 8; ++k)
        r[k] = k < cnt ? _mm256_loadu_ps(u + (p0 + k) * 16 + half * 8) : _mm256_setzero_ps();
      transpose8(r);  // r[i]: lane half * 8 + i at positions p0 .. p0 + 7
      const int64_t nl = std::min<int64_t>(8, n - half * 8);
      if (consecutive) {
        const __m256i m = first_n8(cnt);
        for (int64_t i = 0; i < nl; ++i)
          _mm256_maskstore_ps(base + (half * 8 + i) * ss + po[p0], m, r[i]);
        continue;
      }
      alignas(32) float t[8][8];
      for (int i = 0; i < 8; ++i) _mm256_store_ps(t[i], r[i]);
      for (int64_t i = 0; i < nl; ++i)
        for (int64_t k = 0; k < cnt; ++k)
          if (po[p0 + k] >= 0) base[(half * 8 + i) * ss + po[p0 + k]] = t[i][k];
    }
  }
}
#endif

// Which register-transpose copies above apply: fp32 under AVX-512 (16 x 16) or AVX2 (8 x 8).
enum class Copies { scalar, avx2, avx512 };
Copies fast_copies(int64_t element_size) {
#ifdef SCONV_MULTI_ISA
  if (element_size != 4) return Copies::scalar;
  const Isa isa = active_isa().load(std::memory_order_relaxed);
  return isa == Isa::avx512 ? Copies::avx512 : isa == Isa::avx2 ? Copies::avx2 : Copies::scalar;
#else
  (void)element_size;
  return Copies::scalar;
#endif
}

at::Tensor to_units(const at::Tensor& x_in, const UnitGrid& q, int slot) {
  const at::Tensor x = x_in.contiguous();
  const int64_t b = x.size(0), planes = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t e = 64 / x.element_size(), group = q.nph * q.rows * q.cols + q.pad;
  at::Tensor out = workspace(slot, ceil_div(b, e) * planes * group * e, x.scalar_type());
  const std::vector<int64_t> cols = column_table(q, w);
  const Copies fast = fast_copies(x.element_size());
  (void)fast;
  by_size(x.element_size(), [&](auto tag) {
    using U = decltype(tag);
    U* dst = static_cast<U*>(out.data_ptr());
    for_planes(static_cast<U*>(x.data_ptr()), b, planes, h * w, e, group,
               [&](U* const* lanes, int64_t n, int64_t base) {
      std::memset(dst + base * e, 0, size_t(group * e) * sizeof(U));  // margins; stays in L2
      for (int64_t u = 0; u < h; ++u) {
        const int64_t r = u / q.sh + q.r0;
        if (r >= q.rows) continue;
        const int64_t* ct = cols.data() + (u % q.sh) * w;
#ifdef SCONV_MULTI_ISA
        if (fast != Copies::scalar) {
          const float* const* fl = reinterpret_cast<const float* const*>(lanes);
          float* row = reinterpret_cast<float*>(dst + (base + r * q.cols) * e);
          if (fast == Copies::avx512) row_to_units16(fl, n, u * w, w, ct, row);
          else row_to_units8(fl, n, u * w, w, ct, row);
          continue;
        }
#endif
        for (int64_t v = 0; v < w; ++v) {
          if (ct[v] < 0) continue;
          U* d = dst + (base + r * q.cols + ct[v]) * e;
          for (int64_t l = 0; l < n; ++l) d[l] = lanes[l][u * w + v];
        }
      }
    });
  });
  return out;
}

// Element offsets within an NCHW channel [H, W] of the grid positions of each stride phase
// of a grid (rows x cols per phase): [nph][rows * cols], -1 outside the tensor.
std::vector<int64_t> position_table(const ConvGeom& g, bool phases, int64_t rows, int64_t cols,
                                    int64_t h, int64_t w) {
  const int64_t nph = phases ? g.nph : 1, sh = phases ? g.sh : 1, sw = phases ? g.sw : 1;
  std::vector<int64_t> t(size_t(nph * rows * cols), -1);
  for (int64_t a = 0; a < sh; ++a)
    for (int64_t bb = 0; bb < sw; ++bb) {
      const int64_t f = phases ? g.phase[size_t(a * sw + bb)] : 0;
      if (f < 0) continue;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t u = sh * r + a, v = sw * c + bb;
          if (u < h && v < w) t[size_t((f * rows + r) * cols + c)] = u * w + v;
        }
    }
  return t;
}

// Where the AXPY writes: the NCHW result and the NCHW offsets of each out grid position.
struct ConvOut {
  at::Tensor* out;
  int64_t nph;
  std::vector<int64_t> pos_off;
};

// Scatter the kernel's result units [chunk][n_out][np] (accumulators; sample l of a unit at
// lane[l], the order of the instruction set's Chunk<T>) to the NCHW tensor of dst, one
// (chunk, out plane) per task: each task writes one plane of E samples front to back.
template <typename T>
void from_units(const conv_acc_t<T>* res, const ConvOut& dst, int64_t n_out, int64_t np,
                const int* lane) {
  using C = base::Chunk<T>;
  at::Tensor& out = *dst.out;
  T* y = reinterpret_cast<T*>(out.data_ptr());
  const int64_t nb = out.size(0), e = C::elems, nchunk = ceil_div(nb, e);
  const int64_t ss = out.stride(0), cs = out.stride(1);
  const Copies fast = fast_copies(int64_t(sizeof(T)));
  (void)fast;
  at::parallel_for(0, nchunk * n_out, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ch = t / n_out, o = t % n_out, n = std::min(e, nb - ch * e);
      const int64_t* po = dst.pos_off.data() + (o % dst.nph) * np;
      const conv_acc_t<T>* u = res + t * np * e;
      T* base = y + ch * e * ss + (o / dst.nph) * cs;
#ifdef SCONV_MULTI_ISA
      if constexpr (std::is_same_v<T, float>) {
        if (fast != Copies::scalar) {
          if (fast == Copies::avx512) units_to_plane16(u, np, po, n, base, ss);
          else units_to_plane8(u, np, po, n, base, ss);
          continue;
        }
      }
#endif
      for (int64_t l = 0; l < n; ++l) {
        T* d = base + l * ss;
        const conv_acc_t<T>* ul = u + lane[l];
        for (int64_t p = 0; p < np; ++p)
          if (po[p] >= 0) d[po[p]] = base::from_acc<T>(ul[p * e]);
      }
    }
  });
}

