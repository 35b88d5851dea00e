// CUDA kernels of the constant fan-in sparse linear layer (fp32, bf16, fp64; fp32/fp64 sums).
//
// Layouts, chosen so every warp-wide global load is coalesced:
//  * batch >= kMinTransposed: the dense operand arrives transposed ([n_src, batch], batch
//    contiguous). A block owns 32 output rows x 32 batch columns; lanes are batch columns, so
//    for each nonzero (fetched 32 at a time by the warp and broadcast with shuffles) the warp
//    reads one 128-byte run of the gathered row. The 32x32 result tile is transposed through
//    shared memory and written with lanes along the output rows.
//  * smaller batches: natural layout, one warp per output row, lanes over its nonzeros, a
//    warp reduction per batch row (the x rows are small and stay in L1/L2).
//  * weight gradient (sampled dense-dense product): a block per output row, a warp per
//    nonzero, lanes over the batch of both transposed operands, warp reduction.
// Out-of-range indices are skipped (never read out of bounds); the Python layer rejects them
// with a ValueError when a layer is built or its mask changes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cfi_cuda.h"

namespace sparse_run {
namespace cuda {
namespace {

constexpr int kTile = 32;   // rows per block and batch columns per block (one per lane)
constexpr int kWarps = 8;   // warps per block
constexpr unsigned kFull = 0xffffffffu;

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename AccOf<T>::type v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <typename T> struct Rows {
  const int32_t* ptr;
  const int32_t* cols;
  const int32_t* pos;
  const T* vals;
  int64_t k;
  int64_t nnz;
  // CSC row pointers are clamped to [0, nnz] so a malformed transpose cannot read outside.
  __device__ int64_t begin(int64_t r) const {
    return ptr ? min(max(int64_t(ptr[r]), int64_t(0)), nnz) : r * k;
  }
  __device__ int64_t end(int64_t r) const {
    return ptr ? min(max(int64_t(ptr[r + 1]), begin(r)), nnz) : r * k + k;
  }
  __device__ typename AccOf<T>::type value(int64_t p) const {
    const int64_t q = pos ? int64_t(pos[p]) : p;
    return q >= 0 && q < nnz ? to_acc(vals[q]) : typename AccOf<T>::type(0);
  }
};

template <typename T>
__global__ void __launch_bounds__(kTile * kWarps)
axpy_kernel(Rows<T> rows, const T* __restrict__ srcT, int64_t ld, int64_t n_src, int64_t nb,
            int64_t n_rows, T* __restrict__ out, int64_t ld_out, const T* __restrict__ bias) {
  using A = typename AccOf<T>::type;
  constexpr int R = kTile / kWarps;
  __shared__ A tile[kTile][kTile + 1];
  const int lane = threadIdx.x, warp = threadIdx.y;
  const int64_t row0 = int64_t(blockIdx.x) * kTile, b0 = int64_t(blockIdx.y) * kTile;
  const int64_t b = b0 + lane;
  const bool b_ok = b < nb;
  for (int i = 0; i < R; ++i) {
    const int64_t r = row0 + warp * R + i;
    A acc = 0;
    if (r < n_rows) {  // uniform across the warp
      const int64_t e = rows.end(r);
      for (int64_t p0 = rows.begin(r); p0 < e; p0 += 32) {
        const int64_t p = p0 + lane;
        int32_t c = -1;
        A v = 0;
        if (p < e) {
          c = rows.cols[p];
          v = rows.value(p);
        }
        const int n = int(min(int64_t(32), e - p0));
#pragma unroll 4
        for (int t = 0; t < n; ++t) {  // independent loads: unrolled so several are in flight
          const uint32_t ct = uint32_t(__shfl_sync(kFull, c, t));
          const A vt = __shfl_sync(kFull, v, t);
          if (ct < uint64_t(n_src) && b_ok) acc += vt * to_acc(srcT[int64_t(ct) * ld + b]);
        }
      }
      if (bias != nullptr) acc += to_acc(bias[r]);
    }
    tile[warp * R + i][lane] = acc;
  }
  __syncthreads();
  for (int i = warp; i < kTile; i += kWarps) {  // tile[row][batch] -> out[batch][row]
    const int64_t bb = b0 + i, rr = row0 + lane;
    if (bb < nb && rr < n_rows) out[bb * ld_out + rr] = from_acc<T>(tile[lane][i]);
  }
}

template <typename T>
__global__ void __launch_bounds__(32 * kWarps)
dot_kernel(Rows<T> rows, const T* __restrict__ x, int64_t ldx, int64_t n_src, int64_t nb,
           int64_t n_rows, T* __restrict__ out, int64_t ld_out, const T* __restrict__ bias) {
  using A = typename AccOf<T>::type;
  const int lane = threadIdx.x;
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.y;
  if (r >= n_rows) return;  // the whole warp leaves together
  const int64_t p0 = rows.begin(r), e = rows.end(r);
  for (int64_t b = 0; b < nb; ++b) {
    A acc = 0;
    for (int64_t p = p0 + lane; p < e; p += 32) {
      const uint32_t c = uint32_t(rows.cols[p]);
      if (c < uint64_t(n_src)) acc += rows.value(p) * to_acc(x[b * ldx + c]);
    }
    acc = warp_sum(acc);
    if (lane == 0) out[b * ld_out + r] = from_acc<T>(acc + (bias ? to_acc(bias[r]) : A(0)));
  }
}

template <typename T>
__global__ void __launch_bounds__(32 * kWarps)
sddmm_kernel(const int32_t* __restrict__ idx, int64_t k, const T* __restrict__ dyT,
             const T* __restrict__ xT, int64_t ld, int64_t n_src, int64_t nb, T* __restrict__ dv) {
  using A = typename AccOf<T>::type;
  const int64_t o = blockIdx.x;
  const int lane = threadIdx.x;
  const T* d = dyT + o * ld;
  for (int64_t j = threadIdx.y; j < k; j += kWarps) {
    const uint32_t c = uint32_t(idx[o * k + j]);
    A acc = 0;
    if (c < uint64_t(n_src)) {
      const T* s = xT + int64_t(c) * ld;
      for (int64_t b = lane; b < nb; b += 32) acc += to_acc(d[b]) * to_acc(s[b]);
    }
    acc = warp_sum(acc);
    if (lane == 0) dv[o * k + j] = from_acc<T>(acc);
  }
}

template <typename T>
__global__ void sddmm_small_kernel(const int32_t* __restrict__ idx, int64_t k, int64_t n_out,
                                   const T* __restrict__ dy, int64_t ld_dy,
                                   const T* __restrict__ x, int64_t ld_x, int64_t n_src,
                                   int64_t nb, T* __restrict__ dv) {
  using A = typename AccOf<T>::type;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // flat (o, j)
  if (t >= n_out * k) return;
  const int64_t o = t / k;
  const uint32_t c = uint32_t(idx[t]);
  A acc = 0;
  if (c < uint64_t(n_src))
    for (int64_t b = 0; b < nb; ++b) acc += to_acc(dy[b * ld_dy + o]) * to_acc(x[b * ld_x + c]);
  dv[t] = from_acc<T>(acc);
}

unsigned blocks(int64_t n, int64_t per) { return unsigned((n + per - 1) / per); }

template <typename T> cudaError_t spmm(const SpmmArgs& a, cudaStream_t s) {
  const Rows<T> rows{a.ptr, a.cols, a.pos, static_cast<const T*>(a.vals), a.k, a.nnz};
  const T* src = static_cast<const T*>(a.src);
  T* out = static_cast<T*>(a.out);
  const T* bias = static_cast<const T*>(a.bias);
  if (a.n_rows == 0 || a.nb == 0) return cudaSuccess;
  if (a.transposed) {
    const dim3 grid(blocks(a.n_rows, kTile), blocks(a.nb, kTile));
    if (grid.y > 65535) return cudaErrorInvalidConfiguration;
    axpy_kernel<T><<<grid, dim3(32, kWarps), 0, s>>>(rows, src, a.ld_src, a.n_src, a.nb,
                                                     a.n_rows, out, a.ld_out, bias);
  } else {
    dot_kernel<T><<<blocks(a.n_rows, kWarps), dim3(32, kWarps), 0, s>>>(
        rows, src, a.ld_src, a.n_src, a.nb, a.n_rows, out, a.ld_out, bias);
  }
  return cudaGetLastError();
}

template <typename T> cudaError_t sddmm(const SddmmArgs& a, cudaStream_t s) {
  const T* dy = static_cast<const T*>(a.dy);
  const T* x = static_cast<const T*>(a.x);
  T* dv = static_cast<T*>(a.dv);
  if (a.n_out == 0) return cudaSuccess;
  if (a.transposed) {
    sddmm_kernel<T><<<unsigned(a.n_out), dim3(32, kWarps), 0, s>>>(a.idx, a.k, dy, x, a.ld_x,
                                                                   a.n_src, a.nb, dv);
  } else {
    sddmm_small_kernel<T><<<blocks(a.n_out * a.k, 256), 256, 0, s>>>(
        a.idx, a.k, a.n_out, dy, a.ld_dy, x, a.ld_x, a.n_src, a.nb, dv);
  }
  return cudaGetLastError();
}

template <typename F> cudaError_t by_dtype(DType dtype, const F& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::bf16: return f(__nv_bfloat16{});
    case DType::f64: return f(double{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_spmm(const SpmmArgs& a, DType dtype, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto t) { return spmm<decltype(t)>(a, stream); });
}

cudaError_t launch_sddmm(const SddmmArgs& a, DType dtype, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto t) { return sddmm<decltype(t)>(a, stream); });
}

}  // namespace cuda
}  // namespace sparse_run
