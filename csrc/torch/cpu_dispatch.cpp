// Picks the instruction set of the CPU kernels at run time and gives them
// ATen's thread pool.
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <string>

#include "../kernels/cpu/rnn_cpu.h"

// Declarations of the per-ISA entry points (defined in kernels/cpu/isa_*.cpp).
#define FUSEDRNN_DECLARE_ISA(ISA)                                                      \
  namespace fusedrnn::cpu::ISA {                                                       \
  template <typename S>                                                                \
  void seq_forward_isa(const SeqForwardArgs<S>&, Arena&, const Parallel&);             \
  template <typename S>                                                                \
  void seq_backward_isa(const SeqBackwardArgs<S>&, Arena&, const Parallel&);           \
  }

#ifdef FUSEDRNN_CPU_DEFAULT
FUSEDRNN_DECLARE_ISA(DEFAULT)
#endif
#ifdef FUSEDRNN_CPU_AVX2
FUSEDRNN_DECLARE_ISA(AVX2)
#endif
#ifdef FUSEDRNN_CPU_AVX512
FUSEDRNN_DECLARE_ISA(AVX512)
#endif

namespace fusedrnn::cpu {
namespace {

enum class Isa { kNone, kDefault, kAvx2, kAvx512 };

// ATen's choice (it honours ATEN_CPU_CAPABILITY), limited to what was compiled:
// a full build has the baseline, a build of chosen instruction sets
// (FUSEDRNN_CPU_ISAS, the sanitizer's) may have nothing this CPU runs.
Isa pick_isa() {
  static const Isa isa = [] {
    const std::string cap = at::get_cpu_capability();
#ifdef FUSEDRNN_CPU_AVX512
    if (cap == "AVX512") return Isa::kAvx512;
#endif
#ifdef FUSEDRNN_CPU_AVX2
    if (cap == "AVX2" || cap == "AVX512") return Isa::kAvx2;
#endif
#ifdef FUSEDRNN_CPU_DEFAULT
    return Isa::kDefault;
#else
    return Isa::kNone;
#endif
  }();
  return isa;
}

[[noreturn]] void no_kernels() {
  TORCH_CHECK(false, "fusedrnn was built with CPU kernels for ", compiled_isas(),
              " only (FUSEDRNN_CPU_ISAS), none of which runs at this CPU capability (",
              at::get_cpu_capability(), "); rebuild without FUSEDRNN_CPU_ISAS");
}

}  // namespace

template <typename S>
void seq_forward(const SeqForwardArgs<S>& a, Arena& arena, const Parallel& par) {
  switch (pick_isa()) {
#ifdef FUSEDRNN_CPU_AVX512
    case Isa::kAvx512: return AVX512::seq_forward_isa<S>(a, arena, par);
#endif
#ifdef FUSEDRNN_CPU_AVX2
    case Isa::kAvx2: return AVX2::seq_forward_isa<S>(a, arena, par);
#endif
#ifdef FUSEDRNN_CPU_DEFAULT
    case Isa::kDefault: return DEFAULT::seq_forward_isa<S>(a, arena, par);
#endif
    default: no_kernels();
  }
}

template <typename S>
void seq_backward(const SeqBackwardArgs<S>& a, Arena& arena, const Parallel& par) {
  switch (pick_isa()) {
#ifdef FUSEDRNN_CPU_AVX512
    case Isa::kAvx512: return AVX512::seq_backward_isa<S>(a, arena, par);
#endif
#ifdef FUSEDRNN_CPU_AVX2
    case Isa::kAvx2: return AVX2::seq_backward_isa<S>(a, arena, par);
#endif
#ifdef FUSEDRNN_CPU_DEFAULT
    case Isa::kDefault: return DEFAULT::seq_backward_isa<S>(a, arena, par);
#endif
    default: no_kernels();
  }
}

template void seq_forward<float>(const SeqForwardArgs<float>&, Arena&, const Parallel&);
template void seq_forward<double>(const SeqForwardArgs<double>&, Arena&, const Parallel&);
template void seq_backward<float>(const SeqBackwardArgs<float>&, Arena&, const Parallel&);
template void seq_backward<double>(const SeqBackwardArgs<double>&, Arena&, const Parallel&);

const char* active_isa() {
  switch (pick_isa()) {
    case Isa::kAvx512: return "AVX512";
    case Isa::kAvx2: return "AVX2";
    case Isa::kDefault: return "DEFAULT";
    default: return "NONE";
  }
}

const char* compiled_isas() {
  static const std::string names = [] {
    std::string n;
#ifdef FUSEDRNN_CPU_DEFAULT
    n += ",DEFAULT";
#endif
#ifdef FUSEDRNN_CPU_AVX2
    n += ",AVX2";
#endif
#ifdef FUSEDRNN_CPU_AVX512
    n += ",AVX512";
#endif
    return n.empty() ? n : n.substr(1);
  }();
  return names.c_str();
}

}  // namespace fusedrnn::cpu
