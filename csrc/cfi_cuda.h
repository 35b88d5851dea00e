// Interface between the CUDA kernels (cfi_cuda.cu, no torch headers so nvcc stays fast) and
// their ATen glue (cfi_cuda.cpp). Pointers are raw device pointers of the given dtype.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace sparse_run {
namespace cuda {

enum class DType : int { f32 = 0, bf16 = 1, f64 = 2 };

// out[b, r] = sum over entries p of row r: val(p) * src[b, col(p)] (+ bias[r]).
// Rows are the condensed matrix (ptr == nullptr: entries [r*k, r*k + k), value vals[p]) or
// its CSC transpose (entries [ptr[r], ptr[r+1]), value vals[pos[p]]), nnz entries in all.
struct SpmmArgs {
  const int32_t* ptr;
  const int32_t* cols;
  const int32_t* pos;
  const void* vals;
  int64_t k;
  int64_t nnz;
  int64_t n_rows;
  const void* src;  // [nb, ld_src] natural, or [n_src, ld_src] transposed (batch contiguous)
  int64_t ld_src;
  bool transposed;
  int64_t n_src;
  int64_t nb;
  void* out;        // [nb, ld_out]
  int64_t ld_out;
  const void* bias; // [n_rows] or null
};

// dv[o, j] = sum_b dy[b, o] * x[b, idx[o, j]], operands natural or transposed (ld = batch).
struct SddmmArgs {
  const int32_t* idx;
  int64_t k;
  int64_t n_out;
  const void* dy;
  int64_t ld_dy;
  const void* x;
  int64_t ld_x;
  bool transposed;
  int64_t n_src;
  int64_t nb;
  void* dv;
};

cudaError_t launch_spmm(const SpmmArgs& a, DType dtype, cudaStream_t stream);
cudaError_t launch_sddmm(const SddmmArgs& a, DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparse_run
