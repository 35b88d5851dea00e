// The instruction set the CPU kernels run with, shared by every CPU translation unit
// (cfi_cpu.cpp defines it and the sparse_run_cpu::isa operator that switches it).
#pragma once

#include <atomic>

namespace sparse_run {
namespace cpu {

enum class Isa { base, avx2, avx512 };

std::atomic<Isa>& active_isa();

}  // namespace cpu
}  // namespace sparse_run
