// ATen glue of the CUDA kernels (cfi_cuda.cu): argument checks, layouts, launches, and the
// CUDA registration of the sparse_run::cfi_* operators whose schemas live in Python.
#include <ATen/core/Tensor.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cfi_checks.h"
#include "cfi_cuda.h"

namespace sparse_run {
namespace cuda {
namespace {

// Below this batch the natural layout wins: a transposed copy would cost more than it saves.
constexpr int64_t kMinTransposed = 16;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kBFloat16: return DType::bf16;
    case at::kDouble: return DType::f64;
    default: break;
  }
  TORCH_CHECK_TYPE(false, "sparse_run: unsupported dtype ", t.scalar_type());
  return DType::f32;
}

void check_cuda(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": expected CUDA tensors, got one on ", t.device());
}

at::Tensor transpose_index(const at::Tensor& indices, int64_t n_in) {
  const char* op = "sparse_run::cfi_transpose_index";
  check_transpose_index(indices, n_in, op);
  check_cuda(indices, op);
  const at::Tensor flat = indices.reshape({-1}).to(at::kLong);
  // One host sync per mask, not per step: out-of-range indices must fail loudly here.
  const bool in_range = (flat.min().item<int64_t>() >= 0) && (flat.max().item<int64_t>() < n_in);
  TORCH_CHECK_VALUE(in_range, op, ": indices must lie in [0, in_features) = [0, ", n_in,
                    "); got an index out of range");
  const at::Tensor pos = std::get<1>(at::sort(flat, /*stable=*/true, /*dim=*/0, false));
  const at::Tensor ptr = at::bincount(flat, {}, n_in).cumsum(0);
  return at::cat({ptr.new_zeros({1}), ptr, pos.div(indices.size(1), "floor"), pos}).to(at::kInt);
}

void launch(const SpmmArgs& a, const at::Tensor& like) {
  C10_CUDA_CHECK(launch_spmm(a, dtype_of(like), c10::cuda::getCurrentCUDAStream()));
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                   const std::optional<at::Tensor>& bias,
                   const std::optional<at::Tensor>& /*t_index: for the backward only*/) {
  const char* op = "sparse_run::cfi_forward";
  check_forward(x, values, indices, bias, op);
  check_cuda(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nb = x.size(0), n_in = x.size(1), n_out = values.size(0), k = values.size(1);
  check_int32_range(values, n_in, op);
  at::Tensor out = at::empty({nb, n_out}, x.options());
  const at::Tensor v = values.contiguous(), i = indices.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const bool tr = nb >= kMinTransposed;
  const at::Tensor src = tr ? x.t().contiguous() : x.contiguous();
  launch({nullptr, i.data_ptr<int32_t>(), nullptr, v.data_ptr(), k, n_out * k, n_out,
          src.data_ptr(), tr ? nb : n_in, tr, n_in, nb, out.data_ptr(), n_out,
          b.defined() ? b.data_ptr() : nullptr}, x);
  return out;
}

at::Tensor backward_input(const at::Tensor& grad, const at::Tensor& values,
                          const at::Tensor& indices, int64_t n_in,
                          const std::optional<at::Tensor>& t_index) {
  const char* op = "sparse_run::cfi_backward_input";
  check_backward_input(grad, values, indices, n_in, op);
  check_cuda(grad, op);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t nb = grad.size(0), n_out = values.size(0), nnz = values.numel();
  check_int32_range(values, n_in, op);
  at::Tensor t;
  if (t_index.has_value()) {
    check_transposed_shape(*t_index, indices, n_in, op);
    t = t_index->contiguous();
  } else {
    t = transpose_index(indices, n_in);
  }
  at::Tensor out = at::empty({nb, n_in}, grad.options());
  const at::Tensor v = values.contiguous();
  const bool tr = nb >= kMinTransposed;
  const at::Tensor src = tr ? grad.t().contiguous() : grad.contiguous();
  const int32_t* tp = t.data_ptr<int32_t>();
  launch({tp, tp + n_in + 1, tp + n_in + 1 + nnz, v.data_ptr(), 0, nnz, n_in, src.data_ptr(),
          tr ? nb : n_out, tr, n_out, nb, out.data_ptr(), n_in, nullptr}, grad);
  return out;
}

at::Tensor backward_weight(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& indices) {
  const char* op = "sparse_run::cfi_backward_weight";
  check_backward_weight(grad, x, indices, op);
  check_cuda(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nb = x.size(0), n_in = x.size(1), n_out = indices.size(0), k = indices.size(1);
  check_int32_range(indices, n_in, op);
  at::Tensor dv = at::empty({n_out, k}, x.options());
  const at::Tensor i = indices.contiguous();
  const bool tr = nb >= kMinTransposed;
  const at::Tensor gs = tr ? grad.t().contiguous() : grad.contiguous();
  const at::Tensor xs = tr ? x.t().contiguous() : x.contiguous();
  const SddmmArgs a{i.data_ptr<int32_t>(), k, n_out, gs.data_ptr(), tr ? nb : n_out,
                    xs.data_ptr(), tr ? nb : n_in, tr, n_in, nb, dv.data_ptr()};
  C10_CUDA_CHECK(launch_sddmm(a, dtype_of(x), c10::cuda::getCurrentCUDAStream()));
  return dv;
}

}  // namespace
}  // namespace cuda
}  // namespace sparse_run

TORCH_LIBRARY_IMPL(sparse_run, CUDA, m) {
  m.impl("cfi_forward", &sparse_run::cuda::forward);
  m.impl("cfi_backward_input", &sparse_run::cuda::backward_input);
  m.impl("cfi_backward_weight", &sparse_run::cuda::backward_weight);
  m.impl("cfi_transpose_index", &sparse_run::cuda::transpose_index);
}
