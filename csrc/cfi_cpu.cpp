// CPU kernels of the sparse_run::cfi_* operators (constant fan-in sparse linear layer).
//
// The schemas are defined in Python (sparse_runner/kernels/ops.py); this file registers CPU
// implementations. Products, with W = (values V, indices I) of shape [n_out, k]:
//   forward         Y[b,o]  = sum_j V[o,j] X[b, I[o,j]] (+ bias)   rows of W over X^T (AXPY)
//   backward_input  dX[b,i] = sum_{(o,j): I[o,j]=i} V[o,j] dY[b,o]  rows of W^T (CSC) over dY^T
//   backward_weight dV[o,j] = sum_b dY[b,o] X[b, I[o,j]]           sampled dots of dY^T, X^T
//   forward_packed  the forward for batches <= 4 in the packed layout (register permutes)
// For batch >= kTransposeMinBatch the dense operand is first copied into a transposed,
// zero-padded (and for the AXPY, tiled) buffer so inner loops run over whole vectors of the
// batch; smaller batches gather in the natural layout. Work is split over output rows with
// at::parallel_for (OpenMP). Kernel bodies: cfi_kernels.h, compiled per instruction set.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CFI_MULTI_ISA 1
#include <immintrin.h>
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cfi_checks.h"
#include "cpu_isa.h"

namespace sparse_run {
namespace cpu {

template <typename T> struct SpmmProblem {
  const int32_t* ptr;   // null: fixed k entries per row; else CSC row pointers [n_rows + 1]
  const int32_t* cols;  // [nnz] column of each entry (an index into the dense operand)
  const T* vals;        // [nnz]
  int64_t k;
  const T* src;         // dense operand: [nb, ld_src] natural, or tiled transposed (batch ld_src)
  int64_t ld_src;
  bool transposed;
  int64_t n_src;
  int64_t nb;
  T* out;               // [nb, ld_out]
  int64_t ld_out;
  const T* bias;
};

template <typename T> struct SddmmProblem {
  const int32_t* idx;
  int64_t k;
  int64_t n_out;
  const T* dy;  // [nb, ld_dy] natural, or tiled transposed (batch ld_x)
  int64_t ld_dy;
  const T* x;   // [nb, ld_x] natural, or tiled transposed (batch ld_x)
  int64_t ld_x;
  bool transposed;
  int64_t n_src;
  int64_t nb;
  T* dv;
};

template <typename T> struct PackedProblem {  // see packed_rows in cfi_kernels.h
  const T* pvals;              // [slots, 16]
  const uint8_t* pidx;         // [slots, 16]
  const int32_t* counts;       // [groups, nblk]
  int64_t nblk;
  const int64_t* group_slot;   // [groups + 1] first slot of each group
  const float* xpad;           // one input row as fp32, zero padded to nblk * 32
  float* y;                    // [groups * 16]
};

#ifdef CFI_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
namespace avx512 {
#define CFI_AVX512 1
#define CPU_VEC_BYTES 64
#include "cfi_kernels.h"
#undef CPU_VEC_BYTES
#undef CFI_AVX512
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define CPU_VEC_BYTES 32
#include "cfi_kernels.h"
#undef CPU_VEC_BYTES
}  // namespace avx2
#pragma GCC pop_options
#endif
namespace base {
#include "cfi_kernels.h"
}  // namespace base

// ---------------------------------------------------------------- instruction-set dispatch

Isa detect_isa() {
#ifdef CFI_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::base;
}

const char* isa_name(Isa i) {
  return i == Isa::avx512 ? "avx512" : i == Isa::avx2 ? "avx2" : "base";
}

std::atomic<Isa>& active_isa() {
  static std::atomic<Isa> isa{detect_isa()};
  return isa;
}

// sparse_run_cpu::isa(set): report the kernel instruction set, or switch to a supported one
// (tests use this to run every code path on one machine).
std::string isa_op(std::string set) {
  if (!set.empty()) {
    const Isa best = detect_isa();
    Isa want = set == "avx512" ? Isa::avx512 : set == "avx2" ? Isa::avx2 : Isa::base;
    TORCH_CHECK_VALUE(set == "avx512" || set == "avx2" || set == "base",
                      "sparse_run_cpu::isa: unknown instruction set '", set,
                      "' (avx512, avx2 or base)");
    TORCH_CHECK_VALUE(int(want) <= int(best), "sparse_run_cpu::isa: this CPU supports only ",
                      isa_name(best));
    active_isa() = want;
  }
  return isa_name(active_isa());
}

// f(kernels) with the Kernels struct of the active instruction set.
template <typename F> auto on_active_isa(const F& f) {
  switch (active_isa().load(std::memory_order_relaxed)) {
#ifdef CFI_MULTI_ISA
    case Isa::avx512: return f(avx512::Kernels{});
    case Isa::avx2: return f(avx2::Kernels{});
#endif
    default: return f(base::Kernels{});
  }
}

#include "cfi_cpu_util.h"  // helpers: dtype views, tiled transpose, parallel rows

// ---------------------------------------------------------------- operators
// CSC transpose of the condensed index, packed as int32 [ptr (n_in + 1) | row (nnz) | pos (nnz)]:
// column i of W holds entries q in [ptr[i], ptr[i+1]) at row row[q], flat position pos[q].
// Counting sort, so rows ascend within a column and the result is deterministic.
at::Tensor cfi_transpose_index(const at::Tensor& indices, int64_t n_in) {
  const char* op = "sparse_run::cfi_transpose_index";
  check_transpose_index(indices, n_in, op);
  const at::Tensor idx_t = indices.contiguous();
  const int32_t* idx = idx_t.data_ptr<int32_t>();
  const int64_t n_out = indices.size(0), k = indices.size(1), nnz = n_out * k;
  at::Tensor out = at::empty({n_in + 1 + 2 * nnz}, indices.options());
  int32_t* ptr = out.data_ptr<int32_t>();
  int32_t* row = ptr + n_in + 1;
  int32_t* pos = row + nnz;
  std::fill(ptr, ptr + n_in + 1, 0);
  for (int64_t p = 0; p < nnz; ++p) {
    const uint32_t c = uint32_t(idx[p]);
    if (c >= uint64_t(n_in)) bad_indices(op, n_in);
    ++ptr[c + 1];
  }
  for (int64_t i = 0; i < n_in; ++i) ptr[i + 1] += ptr[i];
  std::vector<int32_t> next(ptr, ptr + n_in);
  for (int64_t o = 0, p = 0; o < n_out; ++o) {
    for (int64_t j = 0; j < k; ++j, ++p) {
      const int32_t q = next[idx[p]]++;
      row[q] = int32_t(o);
      pos[q] = int32_t(p);
    }
  }
  return out;
}

// A caller-supplied transpose must be well formed (row/pos are checked on use).
void check_transposed(const at::Tensor& t, const at::Tensor& indices, int64_t n_in,
                      const char* op) {
  check_transposed_shape(t, indices, n_in, op);
  const int64_t nnz = indices.numel();
  const int32_t* ptr = t.data_ptr<int32_t>();
  bool ok = ptr[0] == 0 && ptr[n_in] == nnz;
  for (int64_t i = 0; ok && i < n_in; ++i) ok = ptr[i] <= ptr[i + 1];
  TORCH_CHECK_VALUE(ok, op, ": t_index is not a valid transpose of indices");
}

at::Tensor cfi_forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& /*t_index: for the backward only*/) {
  const char* op = "sparse_run::cfi_forward";
  check_forward(x, values, indices, bias, op);
  const int64_t nb = x.size(0), n_in = x.size(1), n_out = values.size(0), k = values.size(1);
  check_int32_range(values, n_in, op);
  at::Tensor out = at::empty({nb, n_out}, x.options());
  if (nb == 0 || n_out == 0) return out;
  TORCH_CHECK_VALUE(n_in >= 1, op, ": in_features must be positive");
  const at::Tensor v = values.contiguous(), i = indices.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const bool tr = nb >= kTransposeMinBatch;
  const at::Tensor src = tr ? tiled_transpose(x) : x.contiguous();
  const int64_t ld = tr ? padded_batch(nb, x.element_size()) : n_in;
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "cfi_forward", [&] {
    using T = typename Raw<scalar_t>::type;
    const SpmmProblem<T> q{nullptr, i.data_ptr<int32_t>(), raw<scalar_t>(v), k,
                           raw<scalar_t>(src), ld, tr, n_in, nb,
                           raw_mut<scalar_t>(out), n_out,
                           b.defined() ? raw<scalar_t>(b) : nullptr};
    ok = parallel_rows(n_out, k * nb, [&](int64_t r0, int64_t r1) {
      return on_active_isa([&](auto kern) { return kern.spmm_part(q, r0, r1); });
    });
  });
  if (!ok) bad_indices(op, n_in);
  return out;
}

at::Tensor cfi_backward_input(const at::Tensor& grad, const at::Tensor& values,
                              const at::Tensor& indices, int64_t n_in,
                              const std::optional<at::Tensor>& t_index) {
  const char* op = "sparse_run::cfi_backward_input";
  check_backward_input(grad, values, indices, n_in, op);
  const int64_t nb = grad.size(0), n_out = values.size(0), k = values.size(1), nnz = n_out * k;
  check_int32_range(values, n_in, op);
  at::Tensor t;
  if (t_index.has_value()) {
    t = t_index->contiguous();
    check_transposed(t, indices, n_in, op);
  } else {
    t = cfi_transpose_index(indices, n_in);
  }
  at::Tensor out = at::empty({nb, n_in}, grad.options());
  if (nb == 0) return out;
  // Values in CSC order, so the kernel streams them (they change every step, the index not).
  const at::Tensor tval =
      gather_values(values.contiguous(), t.data_ptr<int32_t>() + n_in + 1 + nnz, nnz, op);
  const bool tr = nb >= kTransposeMinBatch;
  const at::Tensor src = tr ? tiled_transpose(grad) : grad.contiguous();
  const int64_t ld = tr ? padded_batch(nb, grad.element_size()) : n_out;
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "cfi_backward_input", [&] {
    using T = typename Raw<scalar_t>::type;
    const int32_t* tp = t.data_ptr<int32_t>();
    const SpmmProblem<T> q{tp, tp + n_in + 1, raw<scalar_t>(tval), 0,
                           raw<scalar_t>(src), ld, tr, n_out, nb,
                           raw_mut<scalar_t>(out), n_in, nullptr};
    const int64_t per_row = std::max<int64_t>(1, nnz / n_in) * nb;
    ok = parallel_rows(n_in, per_row, [&](int64_t r0, int64_t r1) {
      return on_active_isa([&](auto kern) { return kern.spmm_part(q, r0, r1); });
    });
  });
  TORCH_CHECK_VALUE(ok, op, ": t_index is not a valid transpose of indices");
  return out;
}

at::Tensor cfi_backward_weight(const at::Tensor& grad, const at::Tensor& x,
                               const at::Tensor& indices) {
  const char* op = "sparse_run::cfi_backward_weight";
  check_backward_weight(grad, x, indices, op);
  const int64_t nb = x.size(0), n_in = x.size(1), n_out = indices.size(0), k = indices.size(1);
  check_int32_range(indices, n_in, op);
  at::Tensor dv = at::empty({n_out, k}, x.options());
  if (nb == 0) return dv.zero_();
  const at::Tensor i = indices.contiguous();
  const bool tr = nb >= kTransposeMinBatch;
  const at::Tensor gs = tr ? tiled_transpose(grad) : grad.contiguous();
  const at::Tensor xs = tr ? tiled_transpose(x) : x.contiguous();
  const int64_t ld = padded_batch(nb, x.element_size());
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "cfi_backward_weight", [&] {
    using T = typename Raw<scalar_t>::type;
    const SddmmProblem<T> q{i.data_ptr<int32_t>(), k, n_out, raw<scalar_t>(gs), tr ? ld : n_out,
                            raw<scalar_t>(xs), tr ? ld : n_in, tr, n_in, nb,
                            raw_mut<scalar_t>(dv)};
    ok = parallel_rows(n_out, k * nb, [&](int64_t o0, int64_t o1) {
      return on_active_isa([&](auto kern) { return kern.sddmm_part(q, o0, o1); });
    });
  });
  if (!ok) bad_indices(op, n_in);
  return dv;
}

// Small-batch inference through the packed layout (sparse_runner/kernels/packed.py).
at::Tensor cfi_forward_packed(const at::Tensor& x, const at::Tensor& pvals, const at::Tensor& pidx,
                              const at::Tensor& counts, const std::optional<at::Tensor>& bias,
                              int64_t n_out) {
  const char* op = "sparse_run::cfi_forward_packed";
  check_packed(x, pvals, pidx, counts, bias, n_out, op);
  const int64_t nb = x.size(0), n_in = x.size(1), groups = counts.size(0), nblk = counts.size(1);
  const at::Tensor c = counts.contiguous(), v = pvals.contiguous(), ix = pidx.contiguous();
  const int32_t* cp = c.data_ptr<int32_t>();
  std::vector<int64_t> group_slot(groups + 1, 0);
  for (int64_t g = 0; g < groups; ++g) {
    int64_t n = 0;
    for (int64_t cb = 0; cb < nblk; ++cb) n += std::max(cp[g * nblk + cb], 0);
    group_slot[g + 1] = group_slot[g] + n;
  }
  TORCH_CHECK_VALUE(group_slot[groups] == pvals.size(0), op, ": counts add up to ",
                    group_slot[groups], " slots but pvals has ", pvals.size(0));
  at::Tensor out = at::empty({nb, n_out}, x.options());
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  std::vector<float> xpad(nblk * 32, 0.f), y(groups * 16);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, pvals.scalar_type(), "cfi_forward_packed", [&] {
    using T = typename Raw<scalar_t>::type;
    const PackedProblem<T> q{raw<scalar_t>(v), ix.data_ptr<uint8_t>(), cp, nblk,
                             group_slot.data(), xpad.data(), y.data()};
    for (int64_t r = 0; r < nb; ++r) {
      std::memcpy(xpad.data(), xf.data_ptr<float>() + r * n_in, n_in * sizeof(float));
      at::parallel_for(0, groups, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, nblk)),
                       [&](int64_t g0, int64_t g1) {
                         on_active_isa([&](auto kern) { kern.packed_part(q, g0, g1); });
                       });
      const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
      auto* o = raw_mut<scalar_t>(out) + r * n_out;
      for (int64_t i = 0; i < n_out; ++i) o[i] = base::Kernels::round<T>(y[i] + (bp ? bp[i] : 0.f));
    }
  });
  return out;
}

// Autograd kernel of the packed forward: it has no backward, so refuse to build a graph
// (without it autograd would warn and return wrong gradients); no Python on this path.
at::Tensor cfi_forward_packed_autograd(const at::Tensor& x, const at::Tensor& pvals,
                                       const at::Tensor& pidx, const at::Tensor& counts,
                                       const std::optional<at::Tensor>& bias, int64_t n_out) {
  const bool wants_grad = x.requires_grad() || pvals.requires_grad() ||
                          (bias.has_value() && bias->requires_grad());
  TORCH_CHECK(!(at::GradMode::is_enabled() && wants_grad),
              "sparse_run::cfi_forward_packed is inference-only (no backward); use cfi_forward, "
              "or call it under torch.no_grad() / torch.inference_mode()");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("sparse_run::cfi_forward_packed", "")
                             .typed<decltype(cfi_forward_packed)>();
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // fake/functional tensors too
  return op.call(x, pvals, pidx, counts, bias, n_out);
}

}  // namespace cpu
}  // namespace sparse_run

TORCH_LIBRARY_IMPL(sparse_run, AutogradCPU, m) {
  m.impl("cfi_forward_packed", &sparse_run::cpu::cfi_forward_packed_autograd);
}

TORCH_LIBRARY_IMPL(sparse_run, CPU, m) {
  m.impl("cfi_forward_packed", &sparse_run::cpu::cfi_forward_packed);
  m.impl("cfi_forward", &sparse_run::cpu::cfi_forward);
  m.impl("cfi_backward_input", &sparse_run::cpu::cfi_backward_input);
  m.impl("cfi_backward_weight", &sparse_run::cpu::cfi_backward_weight);
  m.impl("cfi_transpose_index", &sparse_run::cpu::cfi_transpose_index);
}

TORCH_LIBRARY(sparse_run_cpu, m) {
  m.def("isa(str set='') -> str", &sparse_run::cpu::isa_op);
}
