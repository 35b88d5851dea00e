// CPU kernels of the sparse_run::sconv_* operators: direct sparse Conv2d (no im2col matrix).
//
// The weight is ELL: values [O, K] and int32 index [O, K], index = c * kh * kw + i * kw + j
// (the column of the flattened [O, C * kh * kw] weight), -1 for a padded slot (skipped by the
// forward and the input gradient; its weight gradient is exactly zero). Schemas, fake kernels
// and autograd are in Python (sparse_runner/kernels/sconv_ops.py).
//   sconv_forward(x, values, index, kernel, stride, padding)              y  [B, O, oh, ow]
//   sconv_backward_input(grad, values, index, in_size, kernel, stride, padding)  dx [B, C, H, W]
//   sconv_backward_weight(grad, x, index, kernel, stride, padding)        dv [O, K]
// Each call copies its activations into the unit layout of sconv_kernels.h (batch chunks of
// 64 bytes innermost, stride phases, zero margins), runs the kernel with at::parallel_for
// and copies the result back to NCHW. Geometry: sconv_geom.h; layout copies: sconv_layout.h.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SCONV_MULTI_ISA 1
#include <immintrin.h>
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cfi_checks.h"
#include "cpu_isa.h"
#include "sconv_geom.h"

namespace sparse_run {
namespace cpu {

#ifdef SCONV_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
namespace avx512 {
#define CPU_VEC_BYTES 64
#define SCONV_STREAM 1
#define SCONV_SDDMM_VECS 16
#include "sconv_kernels.h"
#undef SCONV_SDDMM_VECS
#undef SCONV_STREAM
#undef CPU_VEC_BYTES
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define CPU_VEC_BYTES 32
#define SCONV_STREAM 1
#include "sconv_kernels.h"
#undef SCONV_STREAM
#undef CPU_VEC_BYTES
}  // namespace avx2
#pragma GCC pop_options
#endif
namespace base {
#include "sconv_kernels.h"
}  // namespace base

template <typename F> auto on_conv_isa(const F& f) {
  switch (active_isa().load(std::memory_order_relaxed)) {
#ifdef SCONV_MULTI_ISA
    case Isa::avx512: return f(avx512::ConvKernels{});
    case Isa::avx2: return f(avx2::ConvKernels{});
#endif
    default: return f(base::ConvKernels{});
  }
}

template <typename S> struct ConvRaw { using type = S; };
template <> struct ConvRaw<at::BFloat16> { using type = uint16_t; };
template <typename S> using conv_raw_t = typename ConvRaw<S>::type;
template <typename S> using conv_acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

#include "sconv_layout.h"  // unit layout copies, workspaces, ConvOut, from_units

// ---------------------------------------------------------------- entry tables
// Forward / weight-gradient table: one plane per output channel, valid slots in order.
ConvTable forward_table(const at::Tensor& index, const ConvGeom& g, const char* op) {
  const int64_t n_out = index.size(0), k = index.size(1), cols = g.c * g.taps();
  const int32_t* idx = index.data_ptr<int32_t>();
  ConvTable t;
  t.ptr.assign(size_t(n_out + 1), 0);
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = idx[o * k + j];
      if (c < 0) {
        TORCH_CHECK_VALUE(c == -1, op, ": index entries must be -1 (padding) or in [0, ",
                          cols, "), got ", c);
        continue;
      }
      TORCH_CHECK_VALUE(c < cols, op, ": index entries must be -1 (padding) or in [0, ", cols,
                        ") = [0, in_channels * kh * kw), got ", c);
      t.offs.push_back(int32_t(g.fwd_offset(c / g.taps(), c % g.taps())));
      t.slot.push_back(int32_t(j));
      t.pos.push_back(int32_t(o * k + j));
      t.src.push_back(int32_t(c / g.taps()));
    }
    t.ptr[size_t(o + 1)] = int64_t(t.offs.size());
  }
  return t;
}

// Input-gradient table: one plane per (input channel, stride phase), counting sort.
ConvTable backward_table(const ConvTable& fwd, const at::Tensor& index, const ConvGeom& g) {
  const int64_t n_out = index.size(0), k = index.size(1), planes = g.c * g.nph;
  const int32_t* idx = index.data_ptr<int32_t>();
  auto plane_of = [&](int64_t c) { return (c / g.taps()) * g.nph + g.tap_phase[c % g.taps()]; };
  ConvTable t;
  t.ptr.assign(size_t(planes + 1), 0);
  for (int32_t p : fwd.pos) ++t.ptr[size_t(plane_of(idx[p]) + 1)];
  for (int64_t r = 0; r < planes; ++r) t.ptr[size_t(r + 1)] += t.ptr[size_t(r)];
  std::vector<int64_t> next(t.ptr.begin(), t.ptr.end() - 1);
  t.offs.resize(fwd.pos.size());
  t.pos.resize(fwd.pos.size());
  t.src.resize(fwd.pos.size());
  for (int32_t p : fwd.pos) {
    const int64_t c = idx[p], o = p / k, q = next[size_t(plane_of(c))]++;
    t.offs[size_t(q)] = int32_t(g.bwd_offset(o, c % g.taps()));
    t.pos[size_t(q)] = p;
    t.src[size_t(q)] = int32_t(o);
  }
  (void)n_out;
  return t;
}

// values (any float dtype) in table order, as the accumulation type A.
template <typename A> std::vector<A> table_values(const at::Tensor& values, const ConvTable& t) {
  const at::Tensor v = values.to(std::is_same_v<A, double> ? at::kDouble : at::kFloat).contiguous();
  const A* src = v.data_ptr<A>();
  std::vector<A> out(t.pos.size());
  for (size_t q = 0; q < t.pos.size(); ++q) out[q] = src[t.pos[q]];
  return out;
}

// ---------------------------------------------------------------- argument checks
struct ConvArgs {
  int64_t kh, kw, sh, sw, ph, pw;
};

ConvArgs conv_args(at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                   const char* op) {
  TORCH_CHECK_VALUE(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2, op,
                    ": kernel, stride and padding must each have 2 entries");
  TORCH_CHECK_VALUE(kernel[0] >= 1 && kernel[1] >= 1, op, ": kernel sizes must be positive");
  TORCH_CHECK_VALUE(stride[0] >= 1 && stride[1] >= 1, op, ": strides must be positive");
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0");
  return {kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]};
}

void check_ell(const at::Tensor& values, const at::Tensor& index, const char* op) {
  TORCH_CHECK_TYPE(index.scalar_type() == at::kInt, op, ": index must be int32, got ",
                   index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 2, op, ": index must be 2-D [out_channels, K], got ",
                    index.sizes());
  if (values.defined()) {
    TORCH_CHECK_VALUE(values.sizes() == index.sizes(), op, ": values ", values.sizes(),
                      " and index ", index.sizes(), " must have the same shape");
    check_floating(values, op, "values");
  }
}

ConvGeom conv_geom(int64_t c, int64_t h, int64_t w, const ConvArgs& a, const char* op) {
  ConvGeom g(c, h, w, a.kh, a.kw, a.sh, a.sw, a.ph, a.pw);
  TORCH_CHECK_VALUE(h + 2 * a.ph >= a.kh && w + 2 * a.pw >= a.kw, op, ": the kernel (", a.kh,
                    "x", a.kw, ") is larger than the padded input (", h + 2 * a.ph, "x",
                    w + 2 * a.pw, ")");
  TORCH_CHECK_VALUE(c * g.taps() < (int64_t(1) << 31), op, ": too many weights per row");
  return g;
}

void check_activation(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D [batch, channels, H, W], got ",
                    t.sizes());
  check_floating(t, op, name);
}

// ---------------------------------------------------------------- operators
int64_t env_bytes(const char* name, int64_t fallback) {
  const char* e = std::getenv(name);
  return e ? std::max<int64_t>(1, std::atoll(e)) : fallback;
}

// Source channels per band: as many as keep the units that `block` consecutive out
// positions read (every plane of a channel, all rows and columns the taps reach) within
// SPARSE_RUN_SCONV_L1 bytes. The estimate counts whole rows and columns in reach, ~1.5x the
// units really read; the default 64 KiB (measured best on a 48 KiB L1, flat 64-96 KiB) keeps
// the true band at ~40 KiB.
enum BandLevel { kBandL1, kBandL2 };
int64_t band_channels(const ConvGeom& g, int64_t planes_per_ch, int64_t src_rows,
                      int64_t src_cols, int64_t ocols, int64_t block, BandLevel level = kBandL1) {
  static const int64_t budgets[2] = {env_bytes("SPARSE_RUN_SCONV_L1", int64_t(64) << 10),
                                     env_bytes("SPARSE_RUN_SCONV_L2", int64_t(1) << 20)};
  const int64_t budget = budgets[level];
  const int64_t rows = std::min(src_rows, ceil_div(block, ocols) + 1 + g.dimax - g.dimin);
  const int64_t cols = std::min(src_cols, std::min(block, ocols) + g.djmax - g.djmin);
  return std::max<int64_t>(1, budget / (planes_per_ch * rows * cols * 64));
}

// The source of an AXPY: its unit buffer, units per chunk and per row, and its channels
// (cut in bands of `per`).
struct ConvSrc {
  const at::Tensor* units;
  int64_t chunk_units, cols, channels, per;
};

template <typename S>
void run_axpy(const ConvTable& t, const at::Tensor& values, const ConvSrc& src,
              const ConvOut& dst, int64_t n_out, int64_t orows, int64_t ocols) {
  using T = conv_raw_t<S>;
  using A = conv_acc_t<S>;
  const std::vector<A> vals = table_values<A>(values, t);
  const int64_t nband = ceil_div(src.channels, src.per);
  const std::vector<int64_t> ptr = band_ptr(t, src.per, nband);
  at::Tensor& out = *dst.out;
  const int64_t nb = out.size(0), e = 64 / out.element_size(), nchunk = ceil_div(nb, e);
  const int64_t np = orows * ocols, nblk = ceil_div(np, base::kConvBlock);
  const int64_t scratch = n_out * base::kConvBlock * (sizeof(T) == 2 ? 2 : 1) * 64;
  const at::Tensor res =
      workspace(2, nchunk * n_out * np * e, std::is_same_v<A, double> ? at::kDouble : at::kFloat);
  int lane[64];
  on_conv_isa([&](auto kern) {
    using K = decltype(kern);
    for (int l = 0; l < int(e); ++l) lane[l] = K::template lane<T>(l);
    const typename K::template Axpy<T> q{
        ptr.data(), nband, t.offs.data(), vals.data(),
        reinterpret_cast<const T*>(src.units->data_ptr()), src.chunk_units, src.cols, n_out,
        orows, ocols, reinterpret_cast<typename K::template Vec<T>*>(res.data_ptr())};
    at::parallel_for(0, nchunk * nblk, 1, [&](int64_t b0, int64_t b1) {
      std::unique_ptr<void, decltype(&std::free)> acc(std::aligned_alloc(64, size_t(scratch)),
                                                      &std::free);
      TORCH_CHECK(acc, "sparse_run::sconv: out of memory for the accumulator scratch");
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t p0 = (b % nblk) * base::kConvBlock;
        K::axpy(q, b / nblk, p0, std::min(np, p0 + base::kConvBlock), acc.get());
      }
    });
  });
  from_units<T>(res.data_ptr<A>(), dst, n_out, np, lane);
}

at::Tensor sconv_forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& index,
                         at::IntArrayRef kernel, at::IntArrayRef stride,
                         at::IntArrayRef padding) {
  const char* op = "sparse_run::sconv_forward";
  const ConvArgs a = conv_args(kernel, stride, padding, op);
  check_ell(values, index, op);
  check_activation(x, op, "x");
  check_same_dtype(x, values, op, "x", "values");
  const ConvGeom g = conv_geom(x.size(1), x.size(2), x.size(3), a, op);
  const int64_t b = x.size(0), n_out = index.size(0);
  const at::Tensor idx = index.contiguous();
  const ConvTable t = forward_table(idx, g, op);
  if (b == 0 || n_out == 0) return at::zeros({b, n_out, g.oh, g.ow}, x.options());
  const int64_t rows = g.fwd_rows(), cols = g.fwd_cols();
  const at::Tensor xs = to_units(x, phase_grid(g, rows, cols, -g.dimin, -g.djmin), 0);
  at::Tensor y = at::empty({b, n_out, g.oh, g.ow}, x.options());
  const ConvOut dst{&y, 1, position_table(g, false, g.oh, g.ow, g.oh, g.ow)};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "sconv_forward", [&] {
    const int64_t per = band_channels(g, g.nph, rows, cols, g.ow, base::kConvBlock);
    run_axpy<scalar_t>(t, values, {&xs, g.c * g.nph * rows * cols, cols, g.c, per}, dst, n_out,
                       g.oh, g.ow);
  });
  return y;
}

at::Tensor sconv_backward_input(const at::Tensor& grad, const at::Tensor& values,
                                const at::Tensor& index, at::IntArrayRef in_size,
                                at::IntArrayRef kernel, at::IntArrayRef stride,
                                at::IntArrayRef padding) {
  const char* op = "sparse_run::sconv_backward_input";
  const ConvArgs a = conv_args(kernel, stride, padding, op);
  check_ell(values, index, op);
  check_activation(grad, op, "grad_out");
  check_same_dtype(grad, values, op, "grad_out", "values");
  TORCH_CHECK_VALUE(in_size.size() == 3, op, ": in_size must be [channels, H, W]");
  const ConvGeom g = conv_geom(in_size[0], in_size[1], in_size[2], a, op);
  const int64_t b = grad.size(0), n_out = index.size(0);
  TORCH_CHECK_VALUE(grad.size(1) == n_out && grad.size(2) == g.oh && grad.size(3) == g.ow, op,
                    ": grad_out must have shape [batch, ", n_out, ", ", g.oh, ", ", g.ow,
                    "], got ", grad.sizes());
  const at::Tensor idx = index.contiguous();
  const ConvTable t = backward_table(forward_table(idx, g, op), idx, g);
  if (b == 0) return at::zeros({b, g.c, g.h, g.w}, grad.options());
  const int64_t rows = g.bwd_rows(), cols = g.bwd_cols(), planes = g.c * g.nph;
  const at::Tensor dys = to_units(grad, plain_grid(rows, cols, g.dimax, g.djmax), 1);
  // Every element of dx is written unless some stride phase has no tap (e.g. 1x1, stride 2).
  at::Tensor dx = g.nph < g.sh * g.sw ? at::zeros({b, g.c, g.h, g.w}, grad.options())
                                      : at::empty({b, g.c, g.h, g.w}, grad.options());
  const ConvOut dst{&dx, g.nph, position_table(g, true, g.hb(), g.wb(), g.h, g.w)};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "sconv_backward_input", [&] {
    const int64_t per = band_channels(g, 1, rows, cols, g.wb(), base::kConvBlock);
    run_axpy<scalar_t>(t, values, {&dys, n_out * rows * cols, cols, n_out, per}, dst, planes,
                       g.hb(), g.wb());
  });
  return dx;
}

at::Tensor sconv_backward_weight(const at::Tensor& grad, const at::Tensor& x,
                                 const at::Tensor& index, at::IntArrayRef kernel,
                                 at::IntArrayRef stride, at::IntArrayRef padding) {
  const char* op = "sparse_run::sconv_backward_weight";
  const ConvArgs a = conv_args(kernel, stride, padding, op);
  check_ell(at::Tensor(), index, op);
  check_activation(x, op, "x");
  check_activation(grad, op, "grad_out");
  check_same_dtype(grad, x, op, "grad_out", "x");
  const ConvGeom g = conv_geom(x.size(1), x.size(2), x.size(3), a, op);
  const int64_t b = x.size(0), n_out = index.size(0), k = index.size(1);
  TORCH_CHECK_VALUE(grad.size(0) == b && grad.size(1) == n_out && grad.size(2) == g.oh &&
                        grad.size(3) == g.ow,
                    op, ": grad_out must have shape [", b, ", ", n_out, ", ", g.oh, ", ", g.ow,
                    "], got ", grad.sizes());
  const at::Tensor idx = index.contiguous();
  const ConvTable t = forward_table(idx, g, op);
  const bool dbl = x.scalar_type() == at::kDouble;
  at::Tensor acc = at::zeros({n_out, k}, x.options().dtype(dbl ? at::kDouble : at::kFloat));
  if (b == 0 || n_out == 0) return acc.to(x.scalar_type());
  const int64_t e = 64 / x.element_size(), nchunk = ceil_div(b, e);
  const int64_t rows = g.fwd_rows(), cols = g.fwd_cols();
  const at::Tensor xs = to_units(x, phase_grid(g, rows, cols, -g.dimin, -g.djmin), 0);
  // dy planes 8 units apart from a multiple of 64 lines: the weight gradient reads one tile
  // of every out plane in turn, which would otherwise fall into the same L1 sets.
  UnitGrid dy_grid = plain_grid(g.oh, g.ow, 0, 0);
  dy_grid.pad = (g.oh * g.ow) % 64 == 0 ? 8 : 0;
  const at::Tensor dys = to_units(grad, dy_grid, 1);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "sconv_backward_weight", [&] {
    using T = conv_raw_t<scalar_t>;
    using A = conv_acc_t<scalar_t>;
    // Bands sized for L2 here: each (out plane, band) reloads its dy tile and ends on single
    // horizontal sums, so L1-sized bands measured slower.
    on_conv_isa([&](auto kern) {
      using K = decltype(kern);
      const int64_t per = band_channels(g, g.nph, rows, cols, g.ow, K::template sddmm_tile<T>(),
                                        kBandL2);
      const int64_t nband = ceil_div(g.c, per);
      const std::vector<int64_t> ptr = band_ptr(t, per, nband);
      const typename K::template Sddmm<T> q{
          ptr.data(), nband, t.offs.data(), t.slot.data(),
          reinterpret_cast<const T*>(dys.data_ptr()), reinterpret_cast<const T*>(xs.data_ptr()),
          g.c * g.nph * rows * cols, cols, g.oh * g.ow + dy_grid.pad, nchunk, n_out, g.oh, g.ow,
          k, acc.data_ptr<A>()};
      const int64_t grain = std::max<int64_t>(1, ceil_div(n_out, at::get_num_threads()));
      at::parallel_for(0, n_out, grain, [&](int64_t o0, int64_t o1) { K::sddmm(q, o0, o1); });
    });
  });
  return acc.to(x.scalar_type());
}

}  // namespace cpu
}  // namespace sparse_run

TORCH_LIBRARY_IMPL(sparse_run, CPU, m) {
  m.impl("sconv_forward", &sparse_run::cpu::sconv_forward);
  m.impl("sconv_backward_input", &sparse_run::cpu::sconv_backward_input);
  m.impl("sconv_backward_weight", &sparse_run::cpu::sconv_backward_weight);
}
