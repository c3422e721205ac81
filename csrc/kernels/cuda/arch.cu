// The targets this build's CUDA kernels were compiled for. nvcc defines
// __CUDA_ARCH_LIST__ in every compilation pass as the list of compute
// capabilities of the build, e.g. 800,900 for -gencode sm_80 and sm_90.
#include <string>

#include "rnn_cuda.h"

#define FRNN_STRINGIFY_(...) #__VA_ARGS__
#define FRNN_STRINGIFY(...) FRNN_STRINGIFY_(__VA_ARGS__)

namespace fusedrnn::cuda {

std::string compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  // "800,900" -> "80,90": the sm_XY numbers.
  const std::string list = FRNN_STRINGIFY(__CUDA_ARCH_LIST__);
  std::string out, item;
  for (size_t k = 0; k <= list.size(); ++k) {
    if (k == list.size() || list[k] == ',') {
      if (!item.empty()) {
        if (!out.empty()) out += ',';
        out += std::to_string(std::stoi(item) / 10);
      }
      item.clear();
    } else if (list[k] != ' ') {
      item += list[k];
    }
  }
  return out;
#else
  return "";
#endif
}

cudaError_t stream_is_capturing(cudaStream_t stream, bool& capturing) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream, &status);
  capturing = status != cudaStreamCaptureStatusNone;
  return err;
}

cudaError_t device_synchronize() { return cudaDeviceSynchronize(); }

cudaError_t take_last_error() { return cudaGetLastError(); }

}  // namespace fusedrnn::cuda
