// The step barrier of the persistent kernels on its own (a grid sync; with one
// block, a block barrier): `steps` barriers in one cooperative launch of
// `blocks` blocks of kPersistentThreads threads.
// bench/persistent_floor.py times it against steps = 0: the latency of one
// barrier, the per-step floor of the persistent path.
#include "persistent.cuh"

namespace fusedrnn::cuda {
namespace {

__global__ void __launch_bounds__(kPersistentThreads, 1) grid_barrier_probe_kernel(int64_t steps) {
  for (int64_t s = 0; s < steps; ++s) step_barrier();
}

}  // namespace

cudaError_t grid_barrier_probe_max_blocks(int& blocks) {
  blocks = 0;
  int dev = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, reinterpret_cast<const void*>(grid_barrier_probe_kernel), kPersistentThreads, 0);
  blocks = sms * per_sm;
  return err;
}

cudaError_t grid_barrier_probe_launch(int blocks, int64_t steps, cudaStream_t stream) {
  PersistentPlan plan;
  plan.blocks = blocks;
  return launch_persistent(grid_barrier_probe_kernel, plan, steps, stream);
}

}  // namespace fusedrnn::cuda
