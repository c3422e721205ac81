// Host emulation of the CUDA step kernels (tools/cuda_emulate.sh), force-included
// into the copies of csrc/kernels/cuda/*.cu that the host compiler builds.
//
// Kernels become plain functions; a launch runs every (block, thread) of the
// grid one after the other with blockIdx/threadIdx set. That is exact for these
// kernels: within a launch every thread reads what it alone writes (or
// read-only data), so any order of threads gives the same result.
#pragma once

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <cstdlib>

inline thread_local uint3 blockIdx, threadIdx;
inline thread_local dim3 blockDim, gridDim;

namespace frnn_emul {

template <typename F>
void launch(dim3 grid, dim3 block, const F& body) {
  if (block.x * block.y * block.z > 1024) std::abort();  // the device limit
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              blockIdx = uint3{bx, by, bz};
              threadIdx = uint3{tx, ty, tz};
              body();
            }
}

inline cudaError_t last_error() { return cudaSuccess; }

}  // namespace frnn_emul

#define cudaGetLastError() ::frnn_emul::last_error()
