// CPU kernels of the sparse_run::cfi_* operators (constant fan-in sparse linear layer).
//
// The schemas are defined in Python (sparse_runner/kernels/ops.py); this file only registers
// CPU implementations. Products and layouts, with W = (values V, indices I) of shape [n_out, k]:
//   forward        Y[b,o]  = sum_j V[o,j] X[b, I[o,j]] (+ bias)  rows of W over X^T (AXPY)
//   backward_input dX[b,i] = sum_{(o,j): I[o,j]=i} V[o,j] dY[b,o]  rows of W^T (CSC) over dY^T
//   backward_weight dV[o,j] = sum_b dY[b,o] X[b, I[o,j]]          sampled dots over dY^T, X^T
// For batch >= kTransposeMinBatch the dense operand is copied once into a transposed, zero-padded
// buffer so every inner loop runs over whole vectors of the batch; smaller batches use gathers
// in the natural layout. Work is split over output rows with at::parallel_for (OpenMP).
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
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <torch/library.h>

#include "cfi_checks.h"

namespace sparse_run {
namespace cpu {

template <typename T> struct SpmmProblem {
  const int32_t* ptr;   // null: fixed k entries per row; else CSC row pointers [n_rows + 1]
  const int32_t* cols;  // [nnz] column of each entry (an index into the dense operand)
  const T* vals;        // [nnz]
  int64_t k;
  const T* src;         // dense operand: [nb, ld_src] natural or [n_src, ld_src] transposed
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
  const T* dy;  // [nb, ld_dy] natural or [n_out, ld_x] transposed
  int64_t ld_dy;
  const T* x;   // [nb, ld_x] natural or [n_src, ld_x] transposed
  int64_t ld_x;
  bool transposed;
  int64_t n_src;
  int64_t nb;
  T* dv;
};

#ifdef CFI_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
namespace avx512 {
#define CFI_GATHER16 1
#include "cfi_kernels.h"
#undef CFI_GATHER16
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "cfi_kernels.h"
}  // namespace avx2
#pragma GCC pop_options
#endif
namespace base {
#include "cfi_kernels.h"
}  // namespace base

// ---------------------------------------------------------------- instruction-set dispatch
enum class Isa { base, avx2, avx512 };

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

template <typename T> bool spmm_part(const SpmmProblem<T>& q, int64_t r0, int64_t r1) {
  switch (active_isa().load(std::memory_order_relaxed)) {
#ifdef CFI_MULTI_ISA
    case Isa::avx512: return avx512::spmm_part(q, r0, r1);
    case Isa::avx2: return avx2::spmm_part(q, r0, r1);
#endif
    default: return base::spmm_part(q, r0, r1);
  }
}

template <typename T> bool sddmm_part(const SddmmProblem<T>& q, int64_t o0, int64_t o1) {
  switch (active_isa().load(std::memory_order_relaxed)) {
#ifdef CFI_MULTI_ISA
    case Isa::avx512: return avx512::sddmm_part(q, o0, o1);
    case Isa::avx2: return avx2::sddmm_part(q, o0, o1);
#endif
    default: return base::sddmm_part(q, o0, o1);
  }
}

// ---------------------------------------------------------------- helpers
constexpr int64_t kTransposeMinBatch = 8;

// Raw element type used by the kernels for a tensor dtype (bf16 as its bits).
template <typename S> struct Raw { using type = S; };
template <> struct Raw<at::BFloat16> { using type = uint16_t; };

template <typename S> const typename Raw<S>::type* raw(const at::Tensor& t) {
  return reinterpret_cast<const typename Raw<S>::type*>(t.data_ptr<S>());
}
template <typename S> typename Raw<S>::type* raw_mut(at::Tensor& t) {
  return reinterpret_cast<typename Raw<S>::type*>(t.data_ptr<S>());
}

// x [B, n] -> [n, ld]: ld = B rounded up to 64 bytes of elements, zero padded.
at::Tensor padded_transpose(const at::Tensor& x) {
  const int64_t chunk = 64 / x.element_size();
  const int64_t b = x.size(0), ld = (b + chunk - 1) / chunk * chunk;
  at::Tensor t = at::empty({x.size(1), ld}, x.options());
  if (ld > b) t.narrow(1, b, ld - b).zero_();
  t.narrow(1, 0, b).copy_(x.t());
  return t;
}

// Rows per parallel task so that each task has at least ~32k multiply-adds.
int64_t grain(int64_t work_per_row) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row));
}

template <typename F> bool parallel_rows(int64_t n, int64_t work_per_row, const F& f) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, grain(work_per_row), [&](int64_t r0, int64_t r1) {
    if (!f(r0, r1)) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

[[noreturn]] void bad_indices(const char* op, int64_t n_src) {
  TORCH_CHECK_VALUE(false, op, ": indices must lie in [0, in_features) = [0, ", n_src,
                    "); got an index out of range");
  std::abort();  // unreachable
}

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
  const at::Tensor src = tr ? padded_transpose(x) : x.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "cfi_forward", [&] {
    using T = typename Raw<scalar_t>::type;
    const SpmmProblem<T> q{nullptr, i.data_ptr<int32_t>(), raw<scalar_t>(v), k,
                           raw<scalar_t>(src), src.size(1), tr, n_in, nb,
                           raw_mut<scalar_t>(out), n_out,
                           b.defined() ? raw<scalar_t>(b) : nullptr};
    ok = parallel_rows(n_out, k * nb, [&](int64_t r0, int64_t r1) { return spmm_part(q, r0, r1); });
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
  const at::Tensor tval = values.reshape({-1}).index_select(0, t.narrow(0, n_in + 1 + nnz, nnz));
  const bool tr = nb >= kTransposeMinBatch;
  const at::Tensor src = tr ? padded_transpose(grad) : grad.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "cfi_backward_input", [&] {
    using T = typename Raw<scalar_t>::type;
    const int32_t* tp = t.data_ptr<int32_t>();
    const SpmmProblem<T> q{tp, tp + n_in + 1, raw<scalar_t>(tval), 0,
                           raw<scalar_t>(src), src.size(1), tr, n_out, nb,
                           raw_mut<scalar_t>(out), n_in, nullptr};
    const int64_t per_row = std::max<int64_t>(1, nnz / n_in) * nb;
    ok = parallel_rows(n_in, per_row, [&](int64_t r0, int64_t r1) { return spmm_part(q, r0, r1); });
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
  const at::Tensor gs = tr ? padded_transpose(grad) : grad.contiguous();
  const at::Tensor xs = tr ? padded_transpose(x) : x.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "cfi_backward_weight", [&] {
    using T = typename Raw<scalar_t>::type;
    const SddmmProblem<T> q{i.data_ptr<int32_t>(), k, raw<scalar_t>(gs), gs.size(1),
                            raw<scalar_t>(xs), xs.size(1), tr, n_in, nb, raw_mut<scalar_t>(dv)};
    ok = parallel_rows(n_out, k * nb, [&](int64_t o0, int64_t o1) { return sddmm_part(q, o0, o1); });
  });
  if (!ok) bad_indices(op, n_in);
  return dv;
}

}  // namespace cpu
}  // namespace sparse_run

TORCH_LIBRARY_IMPL(sparse_run, CPU, m) {
  m.impl("cfi_forward", &sparse_run::cpu::cfi_forward);
  m.impl("cfi_backward_input", &sparse_run::cpu::cfi_backward_input);
  m.impl("cfi_backward_weight", &sparse_run::cpu::cfi_backward_weight);
  m.impl("cfi_transpose_index", &sparse_run::cpu::cfi_transpose_index);
}

TORCH_LIBRARY(sparse_run_cpu, m) {
  m.def("isa(str set='') -> str", &sparse_run::cpu::isa_op);
}
