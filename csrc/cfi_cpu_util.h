// Helpers of the CPU glue (cfi_cpu.cpp): dtype views, the tiled transpose of the dense operand,
// CSC value gather, row-parallel loops and the index error. Included by cfi_cpu.cpp inside its
// namespace, after the ATen headers, so this header includes only cpu_transpose.h.
#pragma once

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

// Element-size views: transposes and gathers only move bytes.
template <typename F> void by_element_size(int64_t size, const F& f) {
  switch (size) {
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    default: f(uint64_t{}); break;
  }
}

// Batch padded to whole 64-byte chunks (the kernels' vector unit).
int64_t padded_batch(int64_t b, int64_t element_size) {
  const int64_t chunk = 64 / element_size;
  return (b + chunk - 1) / chunk * chunk;
}

#ifdef CFI_MULTI_ISA
#include "cpu_transpose.h"  // transpose16

// tiled_transpose for 4-byte elements with 16 x 16 register transposes (~4x the scalar copy):
// columns [c0, c1) of src, all batch tiles; rows past b are zero, columns past n not stored.
__attribute__((target("avx512f"))) inline void tiled_transpose16(
    const float* src, int64_t lds, int64_t b, int64_t n, int64_t ld, int64_t tw, float* dst,
    int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += 16) {
    const int64_t nc = std::min<int64_t>(16, n - c);
    const __mmask16 cols = __mmask16((1u << nc) - 1u);
    for (int64_t b0 = 0; b0 < ld; b0 += tw) {
      const int64_t w = std::min(tw, ld - b0);
      float* tile = dst + b0 * n;
      for (int64_t r = b0; r < b0 + w; r += 16) {
        __m512 v[16];
        for (int i = 0; i < 16; ++i)
          v[i] = r + i < b ? _mm512_maskz_loadu_ps(cols, src + (r + i) * lds + c)
                           : _mm512_setzero_ps();
        transpose16(v);
        for (int j = 0; j < nc; ++j) _mm512_storeu_ps(tile + (c + j) * w + (r - b0), v[j]);
      }
    }
  }
}

// The same with 8 x 8 AVX2 transposes (masked loads for the last columns).
__attribute__((target("avx2"))) inline void tiled_transpose8(
    const float* src, int64_t lds, int64_t b, int64_t n, int64_t ld, int64_t tw, float* dst,
    int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += 8) {
    const int64_t nc = std::min<int64_t>(8, n - c);
    const __m256i cols = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(nc)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t b0 = 0; b0 < ld; b0 += tw) {
      const int64_t w = std::min(tw, ld - b0);
      float* tile = dst + b0 * n;
      for (int64_t r = b0; r < b0 + w; r += 8) {
        __m256 v[8];
        for (int i = 0; i < 8; ++i)
          v[i] = r + i < b ? _mm256_maskload_ps(src + (r + i) * lds + c, cols) : _mm256_setzero_ps();
        transpose8(v);
        for (int j = 0; j < nc; ++j) _mm256_storeu_ps(tile + (c + j) * w + (r - b0), v[j]);
      }
    }
  }
}
#endif

// x [B, n] -> transposed, batch zero padded to ld and cut in tiles of 256 bytes; tile t is a
// contiguous [n, w_t] block (the layout of cfi_kernels.h).
// Copied in 32 x 32 blocks so reads and writes both stay within a few cache lines.
at::Tensor tiled_transpose(const at::Tensor& x_in) {
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const int64_t b = x.size(0), n = x.size(1), lds = x.stride(0);
  const int64_t ld = padded_batch(b, x.element_size());
  const int64_t tw = 256 / x.element_size();
  at::Tensor t = at::empty({n * ld}, x.options());
  constexpr int64_t kBlock = 32;
#ifdef CFI_MULTI_ISA
  const Isa isa = active_isa().load();
  if (x.element_size() == 4 && isa != Isa::base) {
    const float* src = static_cast<const float*>(x.data_ptr());
    float* dst = static_cast<float*>(t.data_ptr());
    at::parallel_for(0, (n + kBlock - 1) / kBlock, 4, [&](int64_t c0, int64_t c1) {
      const int64_t lo = c0 * kBlock, hi = std::min(n, c1 * kBlock);
      if (isa == Isa::avx512) tiled_transpose16(src, lds, b, n, ld, tw, dst, lo, hi);
      else tiled_transpose8(src, lds, b, n, ld, tw, dst, lo, hi);
    });
    return t;
  }
#endif
  by_element_size(x.element_size(), [&](auto tag) {
    using U = decltype(tag);
    const U* src = static_cast<const U*>(x.data_ptr());
    U* dst = static_cast<U*>(t.data_ptr());
    at::parallel_for(0, (n + kBlock - 1) / kBlock, 4, [&](int64_t c0, int64_t c1) {
      for (int64_t cb = c0 * kBlock; cb < std::min(n, c1 * kBlock); cb += kBlock) {
        const int64_t ce = std::min(n, cb + kBlock);
        for (int64_t b0 = 0; b0 < ld; b0 += tw) {
          const int64_t w = std::min(tw, ld - b0), re = std::min(b, b0 + w);
          U* tile = dst + b0 * n;
          for (int64_t c = cb; c < ce; ++c) {
            for (int64_t r = b0; r < re; ++r) tile[c * w + (r - b0)] = src[r * lds + c];
            std::fill(tile + c * w + std::max<int64_t>(re - b0, 0), tile + c * w + w, U(0));
          }
        }
      }
    });
  });
  return t;
}

// values in CSC order: out[q] = values[pos[q]] (pos validated against nnz).
at::Tensor gather_values(const at::Tensor& values, const int32_t* pos, int64_t nnz,
                         const char* op) {
  at::Tensor out = at::empty({nnz}, values.options());
  std::atomic<bool> ok{true};
  by_element_size(values.element_size(), [&](auto tag) {
    using U = decltype(tag);
    const U* src = static_cast<const U*>(values.data_ptr());
    U* dst = static_cast<U*>(out.data_ptr());
    at::parallel_for(0, nnz, 16384, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const uint32_t p = uint32_t(pos[q]);
        if (p >= uint64_t(nnz)) { ok = false; break; }
        dst[q] = src[p];
      }
    });
  });
  TORCH_CHECK_VALUE(ok.load(), op, ": t_index is not a valid transpose of indices");
  return out;
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

