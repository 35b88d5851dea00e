// The packed small-batch inference kernel, part of cfi_kernels.h (same rules: no includes, no
// include guards; included once per instruction set inside the includer's namespace).

// Small-batch inference layout ("packed", built by sparse_runner/kernels/packed.py): output
// rows in groups of 16 (the vector lanes), input columns in blocks of 32. Group g and block cb
// own counts[g, cb] slots; a slot holds, per lane, a column within the block (uint8) and a
// value, zero padded. One x block (32 fp32 = two vectors) sits in registers and vpermt2ps
// gathers from it, so the memory gathers of dot_rows disappear (~3x faster at batch 1).
// y[g*16 + l] = sum over slots of val * xpad[cb*32 + idx] for groups [g0, g1).
template <typename T>
static void packed_rows(const T* pvals, const uint8_t* pidx, const int32_t* counts, int64_t nblk,
                        int64_t g0, int64_t g1, int64_t slot0, const float* xpad, float* y) {
  const T* vp = pvals + slot0 * 16;
  const uint8_t* ip = pidx + slot0 * 16;
  for (int64_t g = g0; g < g1; ++g) {
    float acc[16] = {};
    int64_t cb = 0;
#ifdef CFI_AVX512
    if constexpr (!std::is_same<T, double>::value) {
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      for (; cb < nblk; ++cb) {
        const int32_t m = counts[g * nblk + cb];
        if (m <= 0) continue;
        const __m512 lo = _mm512_loadu_ps(xpad + cb * 32);
        const __m512 hi = _mm512_loadu_ps(xpad + cb * 32 + 16);
        int32_t t = 0;
        for (; t + 1 < m; t += 2, ip += 32, vp += 32) {  // two chains hide the FMA latency
          a0 = _mm512_fmadd_ps(load16(vp), _mm512_permutex2var_ps(lo, load_u8x16(ip), hi), a0);
          a1 = _mm512_fmadd_ps(load16(vp + 16),
                               _mm512_permutex2var_ps(lo, load_u8x16(ip + 16), hi), a1);
        }
        if (t < m) {
          a0 = _mm512_fmadd_ps(load16(vp), _mm512_permutex2var_ps(lo, load_u8x16(ip), hi), a0);
          ip += 16;
          vp += 16;
        }
      }
      _mm512_storeu_ps(acc, _mm512_add_ps(a0, a1));
    }
#endif
    for (; cb < nblk; ++cb) {
      const float* xb = xpad + cb * 32;
      for (int32_t t = 0; t < counts[g * nblk + cb]; ++t, ip += 16, vp += 16)
        for (int l = 0; l < 16; ++l) acc[l] += float(to_acc(vp[l])) * xb[ip[l] & 31];
    }
    std::memcpy(y + (g - g0) * 16, acc, sizeof(acc));
  }
}

