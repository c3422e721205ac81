// Emulation stand-in (tools/cuda_emulate.sh): one null stream.
#pragma once
#include <c10/core/Device.h>
#include <cuda_runtime_api.h>
namespace c10::cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda
