// Emulation stand-in (tools/cuda_emulate.sh) for C10_CUDA_CHECK.
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#define C10_CUDA_CHECK(EXPR)                                                   \
  do {                                                                         \
    const cudaError_t frnn_err_ = (EXPR);                                      \
    TORCH_CHECK(frnn_err_ == cudaSuccess, "CUDA error ", static_cast<int>(frnn_err_)); \
  } while (0)
