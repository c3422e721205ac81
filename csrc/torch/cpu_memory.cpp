// CPU memory of the layer operators (cpu_memory.h).
#include "cpu_memory.h"

#include <ATen/Context.h>
#include <ATen/EmptyTensor.h>
#include <ATen/native/TensorFactories.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "rnn_layer.h"

namespace fusedrnn {
namespace {

// Blocks larger than kHugeMin are aligned to 2 MiB and offered transparent huge
// pages (Linux, where THP is `always` or `madvise`), as torch's own CPU
// allocator does for every block under THP_MEM_ALLOC_ENABLE=1. glibc maps such
// blocks afresh from the system on every allocation (its mmap threshold, which
// freed blocks raise so that the next ones of their size come from its heap,
// stops at 32 MiB), and a long sequence's saved tensors and gate gradients are
// such blocks: LSTM or GRU training at T=1000 N=16 C=H=256 took 33,000-63,000
// page faults of about 2 us each a step, more on two threads, whose faults
// contend: a fifth to a third of the step (AMD EPYC, 2 cores, KVM). In 2 MiB
// pages, 200-2,500, and the step 18-27% faster. Smaller blocks stay in 4 KiB
// pages: there, huge pages made glibc's heap give memory back and fault it in
// again, at up to 3 ms a huge page where the hypervisor had not backed it yet.
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeMin = size_t{32} << 20;

}  // namespace

char* aligned_block(size_t bytes) {
  const bool huge = bytes > kHugeMin;
  const size_t align = huge ? kHugePage : 64;
  const size_t size = std::max<size_t>(align, (bytes + align - 1) / align * align);
  void* p = std::aligned_alloc(align, size);
  TORCH_CHECK(p != nullptr, "fusedrnn: out of memory allocating ", bytes, " bytes of CPU memory");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) madvise(p, size, MADV_HUGEPAGE);  // a hint: where THP is off, 4 KiB pages
#endif
  return static_cast<char*>(p);
}

namespace {

// torch's default CPU allocator, except that blocks larger than kHugeMin come
// from aligned_block. They are reported to the profiler as the default
// allocator reports its own.
struct LargeCpuAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n <= kHugeMin) return c10::GetDefaultCPUAllocator()->allocate(n);
    char* p = aligned_block(n);
    c10::profiledCPUMemoryReporter().New(p, n);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  static void release(void* p) {
    c10::profiledCPUMemoryReporter().Delete(p);
    std::free(p);
  }
  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// Where the process has replaced torch's CPU allocator, its own.
c10::Allocator* large_cpu_allocator() {
  static LargeCpuAllocator* const large = new LargeCpuAllocator();  // outlives every tensor
  c10::Allocator* current = c10::GetCPUAllocator();
  return current == c10::GetDefaultCPUAllocator() ? large : current;
}

}  // namespace

Tensor layer_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (!opts.device().is_cpu()) return at::empty(sizes, opts);
  Tensor t = at::detail::empty_generic(sizes, large_cpu_allocator(),
                                       c10::DispatchKeySet(c10::DispatchKey::CPU),
                                       c10::typeMetaToScalarType(opts.dtype()), std::nullopt);
  // As at::empty under torch.use_deterministic_algorithms(True).
  const auto& ctx = at::globalContext();
  if (ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory())
    at::native::fill_empty_deterministic_(t);
  return t;
}

}  // namespace fusedrnn
