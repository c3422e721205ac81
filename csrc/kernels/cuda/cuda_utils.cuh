// Device helpers shared by the .cu files: conversions between the storage type
// S and the compute type A = acc_t<S>, the launch shape of a step kernel, and
// the runtime-flag-to-template-constant switch.
//
// The 16-bit conversions are explicit intrinsics (no operators): PyTorch's
// extension build defines __CUDA_NO_HALF_OPERATORS__, __CUDA_NO_HALF_CONVERSIONS__
// and __CUDA_NO_BFLOAT16_CONVERSIONS__, and the compile check does the same.
#pragma once

#include <algorithm>
#include <type_traits>

#include "../cells.h"
#include "rnn_cuda.h"

namespace fusedrnn::cuda {

// A step kernel's block: 256 threads, x over hidden units (coalesced), y over
// rows. Memory-bound pointwise work; 256 keeps enough warps per SM in flight.
constexpr int kThreads = 256;
// __launch_bounds__(kThreads, kMinBlocks): at least 4 blocks per SM, so at most
// 64 registers, which every kernel fits without spilling (tools/
// cuda_compile_check.sh). With __launch_bounds__(256) alone, ptxas (CUDA 13.0)
// spilled 16 bytes inside the row loop of the float64 LSTM forward for sm_90 at
// 48 registers.
constexpr int kMinBlocks = 4;
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename S>
__device__ __forceinline__ S from_acc(acc_t<S> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// p[i] in A, or 0 where p is null (absent bias).
template <typename S>
__device__ __forceinline__ acc_t<S> load_or_zero(const S* p, int64_t i) {
  return p != nullptr ? to_acc(p[i]) : acc_t<S>(0);
}

// The hidden unit of this thread; the row loop strides over gridDim.y.
__device__ __forceinline__ int64_t thread_unit() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
}
__device__ __forceinline__ int64_t row_stride() {
  return static_cast<int64_t>(gridDim.y) * blockDim.y;
}

// out[i] = i < split ? prev[i] : init[i] for the row's columns u, u + H, ...
// (the recurrent input is P wide, P may exceed H through the op interface).
template <typename S>
__device__ __forceinline__ void copy_prev_row(const PrevRows<S>& pr, int64_t split, int64_t i,
                                              int64_t u, int64_t H) {
  if (pr.out == nullptr) return;
  const S* src = i < split ? pr.prev + i * pr.width : pr.init + i * pr.width;
  S* dst = pr.out + i * pr.width;
  for (int64_t j = u; j < pr.width; j += H) dst[j] = src[j];
}

struct StepShape {
  dim3 grid, block;
};

// Blocks of kThreads: as many units as H needs (a multiple of 32, so a warp
// never straddles two rows) and the rest of the block over rows, so a small H
// does not leave most threads idle.
inline StepShape step_shape(int64_t rows, int64_t H) {
  const int64_t bx = std::min<int64_t>(round_up<int64_t>(H, 32), kThreads);
  const int64_t by = kThreads / bx;
  const int64_t gy = std::min<int64_t>(ceil_div<int64_t>(rows, by), kMaxGridY);
  return StepShape{dim3(static_cast<unsigned>(ceil_div<int64_t>(H, bx)), static_cast<unsigned>(gy)),
                   dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by))};
}

// The one launch of every step kernel: kernel<<<step_shape>>>(p) on `stream`,
// nothing when there is no row or no unit; returns the launch error.
template <typename Params>
inline cudaError_t launch_step(void (*kernel)(Params), int64_t rows, int64_t H, const Params& p,
                               cudaStream_t stream) {
  if (rows == 0 || H == 0) return cudaSuccess;
  const StepShape shape = step_shape(rows, H);
  kernel<<<shape.grid, shape.block, 0, stream>>>(p);
  return cudaGetLastError();
}

// The step kernel of every pointwise pass: Unit(p, u) loads what unit u keeps
// for all rows (biases, peepholes), unit(p, i) does row i. The persistent
// kernels call the same units for their block's units.
template <class Unit, typename Params>
__global__ void __launch_bounds__(kThreads, kMinBlocks) step_kernel(const Params p) {
  const int64_t u = thread_unit();
  if (u >= p.H) return;
  const Unit unit(p, u);
  for (int64_t i = first_row(); i < p.rows; i += row_stride()) unit(p, i);
}

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a template constant.
template <typename F>
inline cudaError_t bool_switch(bool b, const F& f) {
  return b ? f(std::true_type{}) : f(std::false_type{});
}

}  // namespace fusedrnn::cuda

// Explicit instantiations of a launcher (FRNN_INSTANTIATE_LAUNCH) or of a persistent
// plan/launch pair, name##_plan and name##_launch (FRNN_INSTANTIATE_PERSISTENT): for the
// four element types, or for FRNN_ELEMENT alone where the translation unit defines it
// before its includes. The LSTM's kernels are compiled that way, one file per element
// type, so that the build runs their nvcc jobs side by side (lstm_forward_f32.cu ...).
#define FRNN_INSTANTIATE_LAUNCH_TYPE(launch, Params, S) \
  template cudaError_t fusedrnn::cuda::launch<S>(const fusedrnn::cuda::Params<S>&, cudaStream_t);
#define FRNN_INSTANTIATE_PERSISTENT_TYPE(name, Args, S)                                   \
  template cudaError_t fusedrnn::cuda::name##_plan<S>(const fusedrnn::cuda::Args<S>&,      \
                                                      fusedrnn::cuda::PersistentPlan&);    \
  template cudaError_t fusedrnn::cuda::name##_launch<S>(                                  \
      const fusedrnn::cuda::Args<S>&, const fusedrnn::cuda::PersistentPlan&, cudaStream_t);
#ifdef FRNN_ELEMENT
#define FRNN_FOR_EACH_ELEMENT(X, a, b) X(a, b, FRNN_ELEMENT)
#else
#define FRNN_FOR_EACH_ELEMENT(X, a, b) \
  X(a, b, float) X(a, b, double) X(a, b, __half) X(a, b, __nv_bfloat16)
#endif
#define FRNN_INSTANTIATE_LAUNCH(launch, Params) \
  FRNN_FOR_EACH_ELEMENT(FRNN_INSTANTIATE_LAUNCH_TYPE, launch, Params)
#define FRNN_INSTANTIATE_PERSISTENT(name, Args) \
  FRNN_FOR_EACH_ELEMENT(FRNN_INSTANTIATE_PERSISTENT_TYPE, name, Args)
