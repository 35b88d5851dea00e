// Argument checks shared by the CPU and CUDA glue of the sparse_run::cfi_* operators.
// Every bad input becomes a Python ValueError/TypeError with the operator named, never a
// crash: the kernels themselves still bounds-check indices (CPU) or skip bad ones (CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace sparse_run {

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kBFloat16 || s == at::kDouble, op, ": ", name,
                   " must be float32, bfloat16 or float64, got ", s);
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* na, const char* nb) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", na, " (", a.scalar_type(),
                   ") and ", nb, " (", b.scalar_type(), ") must have the same dtype");
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* na, const char* nb) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", na, " is on ", a.device(), " but ", nb,
                    " is on ", b.device());
}

// values [n_out, k] and int32 indices [n_out, k] with k >= 1.
inline void check_condensed(const at::Tensor& values, const at::Tensor& indices, const char* op) {
  TORCH_CHECK_VALUE(values.dim() == 2, op, ": values must be 2-D [out_features, k], got ",
                    values.sizes());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt, op, ": indices must be int32, got ",
                   indices.scalar_type());
  TORCH_CHECK_VALUE(indices.sizes() == values.sizes(), op, ": indices ", indices.sizes(),
                    " and values ", values.sizes(), " must have the same shape");
  TORCH_CHECK_VALUE(values.size(1) >= 1, op, ": k (nonzeros per row) must be at least 1, got 0");
  check_same_device(values, indices, op, "values", "indices");
  check_floating(values, op, "values");
}

inline void check_matrix(const at::Tensor& t, int64_t cols, const char* op, const char* name,
                         const char* what) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D [batch, ", what, "], got ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.size(1) == cols, op, ": ", name, " has ", t.size(1), " columns but ",
                    what, " is ", cols);
}

inline void check_forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& indices,
                          const std::optional<at::Tensor>& bias, const char* op) {
  check_condensed(values, indices, op);
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [batch, in_features], got ", x.sizes());
  check_same_dtype(x, values, op, "x", "values");
  check_same_device(x, values, op, "x", "values");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == values.size(0), op,
                      ": bias must have shape [", values.size(0), "], got ", bias->sizes());
    check_same_dtype(*bias, values, op, "bias", "values");
    check_same_device(*bias, values, op, "bias", "values");
  }
}

inline void check_backward_input(const at::Tensor& grad, const at::Tensor& values,
                                 const at::Tensor& indices, int64_t n_in, const char* op) {
  check_condensed(values, indices, op);
  TORCH_CHECK_VALUE(n_in >= 1, op, ": in_features must be positive, got ", n_in);
  check_matrix(grad, values.size(0), op, "grad_out", "out_features");
  check_same_dtype(grad, values, op, "grad_out", "values");
  check_same_device(grad, values, op, "grad_out", "values");
}

inline void check_backward_weight(const at::Tensor& grad, const at::Tensor& x,
                                  const at::Tensor& indices, const char* op) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt, op, ": indices must be int32, got ",
                   indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(1) >= 1, op,
                    ": indices must be 2-D [out_features, k] with k >= 1, got ", indices.sizes());
  check_floating(x, op, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [batch, in_features], got ", x.sizes());
  check_matrix(grad, indices.size(0), op, "grad_out", "out_features");
  TORCH_CHECK_VALUE(grad.size(0) == x.size(0), op, ": grad_out has batch ", grad.size(0),
                    " but x has batch ", x.size(0));
  check_same_dtype(grad, x, op, "grad_out", "x");
  check_same_device(grad, x, op, "grad_out", "x");
  check_same_device(indices, x, op, "indices", "x");
}

inline void check_int32_range(const at::Tensor& values, int64_t n_in, const char* op) {
  TORCH_CHECK_VALUE(values.numel() < (int64_t(1) << 31) && n_in < (int64_t(1) << 31), op,
                    ": layers with 2^31 or more weights or inputs are not supported");
}

inline void check_transpose_index(const at::Tensor& indices, int64_t n_in, const char* op) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt, op, ": indices must be int32, got ",
                   indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(1) >= 1, op,
                    ": indices must be 2-D [out_features, k] with k >= 1, got ", indices.sizes());
  TORCH_CHECK_VALUE(n_in >= 1, op, ": in_features must be positive, got ", n_in);
  check_int32_range(indices, n_in, op);
}

// Shape of a caller-supplied CSC transpose (t_index); its contents are checked where used.
inline void check_transposed_shape(const at::Tensor& t, const at::Tensor& indices, int64_t n_in,
                                   const char* op) {
  const int64_t want = n_in + 1 + 2 * indices.numel();
  TORCH_CHECK_VALUE(t.scalar_type() == at::kInt && t.dim() == 1 && t.numel() == want, op,
                    ": t_index must be the int32 output of cfi_transpose_index for these "
                    "indices (", want, " elements), got ", t.scalar_type(), " ", t.sizes());
  check_same_device(t, indices, op, "t_index", "indices");
}

// The packed small-batch layout (see sparse_runner/kernels/packed.py).
inline void check_packed(const at::Tensor& x, const at::Tensor& pvals, const at::Tensor& pidx,
                         const at::Tensor& counts, const std::optional<at::Tensor>& bias,
                         int64_t n_out, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [batch, in_features], got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
                   ": x must be float32 or bfloat16, got ", x.scalar_type());
  check_same_dtype(x, pvals, op, "x", "pvals");
  TORCH_CHECK_TYPE(pidx.scalar_type() == at::kByte && counts.scalar_type() == at::kInt, op,
                   ": pidx must be uint8 and counts int32");
  TORCH_CHECK_VALUE(n_out >= 1 && counts.dim() == 2 && counts.size(0) == (n_out + 15) / 16 &&
                        counts.size(1) == (x.size(1) + 31) / 32,
                    op, ": counts must have shape [ceil(out_features / 16), ceil(in_features / "
                    "32)] = [", (n_out + 15) / 16, ", ", (x.size(1) + 31) / 32, "], got ",
                    counts.sizes());
  TORCH_CHECK_VALUE(pvals.dim() == 2 && pvals.size(1) == 16 && pidx.sizes() == pvals.sizes(), op,
                    ": pvals and pidx must both have shape [slots, 16], got ", pvals.sizes(),
                    " and ", pidx.sizes());
  for (const at::Tensor* t : {&pvals, &pidx, &counts}) check_same_device(*t, x, op, "packed", "x");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n_out, op,
                      ": bias must have shape [", n_out, "], got ", bias->sizes());
    check_same_dtype(*bias, x, op, "bias", "x");
  }
}

}  // namespace sparse_run
