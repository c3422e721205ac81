// How FUSEDRNN_CUDA_PATH=auto (the default) picks the path of a layer on CUDA.
// Torch-free, so that every build of fusedrnn._C reports the choice
// (fusedrnn._C._persistent_pays) and the tests check it on any machine against
// the measurements it comes from.
#pragma once

#include <cstdint>

namespace fusedrnn {

// Whether auto runs a layer of T steps, batch N, G gate blocks of hidden size H,
// elements of elem_bytes bytes, on the persistent path (when the kernel's plan
// takes the layer; else the standard path). tensor_cores: whether the plan's
// product of 16-bit elements runs on tensor cores (sm_80 and later). From one
// run of both paths against each other on an H200 (132 multiprocessors;
// bench/results/gpu-nvidia-h200, bench/PERSISTENT.md, "The automatic choice"):
// the persistent path wins where a step's recurrent product, N x G*H x H
// multiply-adds, is small enough that one grid barrier per step costs less than
// the standard path's launches per step. Up to 2^26 multiply-adds per step on
// tensor cores (float16, bfloat16; 2^27 in training), up to 2^22 on CUDA cores
// (float32, also where TF32 is allowed, which only speeds the persistent product
// up; 16-bit elements without tensor cores likewise). float64, projections and
// sequences shorter than 16 steps were not measured and stay on the standard path.
inline bool persistent_pays(int64_t T, int64_t N, int64_t G, int64_t H, bool projection,
                            int64_t elem_bytes, bool tensor_cores, bool training) {
  if (projection || T < 16) return false;
  const double macs = static_cast<double>(N) * static_cast<double>(G) * static_cast<double>(H) *
                      static_cast<double>(H);
  if (elem_bytes == 2 && tensor_cores) return macs <= (training ? 134217728.0 : 67108864.0);
  if (elem_bytes <= 4) return macs <= 4194304.0;
  return false;
}

}  // namespace fusedrnn
