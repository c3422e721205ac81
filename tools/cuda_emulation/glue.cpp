// Emulation build (tools/cuda_emulate.sh): CPU tensors take the CUDA path, so
// the torch layer of csrc/torch/rnn_cuda.cpp and the kernels run on the host.
#include "rnn_layer.h"

namespace fusedrnn {

void cpu_layer_forward(const LayerInputs& in, const LayerGeometry& g, bool training,
                       ForwardResult& out) {
  cuda_layer_forward(in, g, training, out);
}

void cpu_layer_backward(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                        GradResult& out) {
  cuda_layer_backward(in, g, gi, out);
}

// The CUDA path runs the directions of a layer one after the other.
bool cpu_directions_at_once(const LayerInputs&, const LayerGeometry&, bool) { return false; }

const char* cpu_single_step_products() { return "CUDA-EMULATION"; }
const char* cpu_bfloat16_products() { return "CUDA-EMULATION"; }

namespace cpu {
const char* active_isa() { return "CUDA-EMULATION"; }
const char* compiled_isas() { return "CUDA-EMULATION"; }
}  // namespace cpu

}  // namespace fusedrnn
