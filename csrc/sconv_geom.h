// Geometry of the direct sparse convolution (host side of sconv_cpu.cpp): stride phases,
// per-tap offsets, source grids with zero margins, and the entry tables of the kernels.
//
// A tap (i, j) of a kernel with stride (sh, sw) and padding (ph, pw) reads input row
// u = sh * oh + i - ph. Writing i - ph = sh * di + a (0 <= a < sh) gives u = sh * (oh + di) + a:
// the tap reads row oh + di of the input's stride phase a. So a strided convolution is a
// stride-1 one over the phase planes x_ab[R, C] = x[sh R + a, sw C + b] (only the phases
// some tap uses are stored) with tap offsets (di, dj) that may be negative.
#pragma once

#include <cstdint>
#include <vector>

namespace sparse_run {
namespace cpu {

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct ConvGeom {
  int64_t c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
  int64_t nph = 0;                 // stride phases used by some tap
  std::vector<int64_t> phase;      // [sh * sw] phase id of (a, b), or -1
  std::vector<int64_t> tap_phase, tap_di, tap_dj;  // per tap t = i * kw + j
  int64_t dimin = 0, dimax = 0, djmin = 0, djmax = 0;

  ConvGeom(int64_t c_, int64_t h_, int64_t w_, int64_t kh_, int64_t kw_, int64_t sh_,
           int64_t sw_, int64_t ph_, int64_t pw_)
      : c(c_), h(h_), w(w_), kh(kh_), kw(kw_), sh(sh_), sw(sw_), ph(ph_), pw(pw_) {
    oh = (h + 2 * ph - kh) / sh + 1;
    ow = (w + 2 * pw - kw) / sw + 1;
    phase.assign(size_t(sh * sw), -1);
    for (int64_t i = 0; i < kh; ++i) {
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t di = floor_div(i - ph, sh), dj = floor_div(j - pw, sw);
        const int64_t a = i - ph - sh * di, b = j - pw - sw * dj;
        int64_t& id = phase[size_t(a * sw + b)];
        if (id < 0) id = nph++;
        tap_phase.push_back(id);
        tap_di.push_back(di);
        tap_dj.push_back(dj);
        const bool first = i == 0 && j == 0;
        dimin = first || di < dimin ? di : dimin;
        dimax = first || di > dimax ? di : dimax;
        djmin = first || dj < djmin ? dj : djmin;
        djmax = first || dj > djmax ? dj : djmax;
      }
    }
  }
  int64_t taps() const { return kh * kw; }
  // Forward source: phase planes of x, grid (oh + dimax - dimin) x (ow + djmax - djmin),
  // logical (0, 0) at (-dimin, -djmin).
  int64_t fwd_rows() const { return oh + dimax - dimin; }
  int64_t fwd_cols() const { return ow + djmax - djmin; }
  // Gradient to the input: out = dx phase planes of grid hb x wb; source = dy planes with
  // margins, grid (hb + dimax - dimin) x (wb + djmax - djmin), logical (0, 0) at (dimax, djmax).
  int64_t hb() const { return ceil_div(h, sh); }
  int64_t wb() const { return ceil_div(w, sw); }
  int64_t bwd_rows() const { return hb() + dimax - dimin; }
  int64_t bwd_cols() const { return wb() + djmax - djmin; }
  // Source offset (units within a chunk) of weight column idx = ch * taps + t.
  int64_t fwd_offset(int64_t ch, int64_t t) const {
    const int64_t cols = fwd_cols();
    return (ch * nph + tap_phase[t]) * fwd_rows() * cols + (tap_di[t] - dimin) * cols +
           (tap_dj[t] - djmin);
  }
  int64_t bwd_offset(int64_t o, int64_t t) const {
    const int64_t cols = bwd_cols();
    return o * bwd_rows() * cols + (dimax - tap_di[t]) * cols + (djmax - tap_dj[t]);
  }
};

// A CSR list of kernel entries: plane r owns [ptr[r], ptr[r + 1]).
// src: the source channel an entry reads (bands of source channels are cut on it); within a
// plane the entries are sorted by it.
struct ConvTable {
  std::vector<int64_t> ptr;
  std::vector<int32_t> offs, slot, pos, src;  // pos: flat position in values / index
};

// Bands of `per` consecutive source channels: ptr of the (plane, band) lists of table t,
// [planes * nband + 1] (entries of a plane are sorted by source channel, so each list is a
// contiguous run).
inline std::vector<int64_t> band_ptr(const ConvTable& t, int64_t per, int64_t nband) {
  const int64_t planes = int64_t(t.ptr.size()) - 1;
  std::vector<int64_t> out(size_t(planes * nband + 1));
  for (int64_t r = 0; r < planes; ++r) {
    int64_t q = t.ptr[size_t(r)];
    for (int64_t b = 0; b < nband; ++b) {
      out[size_t(r * nband + b)] = q;
      while (q < t.ptr[size_t(r + 1)] && t.src[size_t(q)] / per == b) ++q;
    }
  }
  out.back() = planes ? t.ptr.back() : 0;
  return out;
}

}  // namespace cpu
}  // namespace sparse_run
