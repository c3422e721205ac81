// The Python extension module fusedrnn._C. Loading it registers the operators
// (ops.cpp); it also says what this build contains.
// pybind11 alone, not torch/extension.h: nothing here crosses the binding as a
// tensor, and the whole torch API took this file from 16 s to 67 s to compile.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include <string>

#include "../kernels/cpu/rnn_cpu.h"
#include "path_choice.h"
#include "persistent_trace.h"

#ifdef FUSEDRNN_WITH_CUDA
namespace fusedrnn {
namespace cuda {
// The sm_XY targets the CUDA kernels were compiled for (kernels/cuda).
std::string compiled_archs();
}  // namespace cuda
// `steps` grid barriers of the persistent kernels in one cooperative launch of
// `blocks` blocks on the current device and stream (rnn_cuda.cpp).
void grid_barrier_probe(int64_t blocks, int64_t steps);
}  // namespace fusedrnn
#endif

namespace fusedrnn {
// Where single steps on CPU take their products: "own", "blas by shape" or
// "blas" (cpu_layer.cpp, FUSEDRNN_CPU_BLAS).
const char* cpu_single_step_products();
// Where bfloat16 layers on CPU take their products: "amx" or "float32"
// (cpu_layer.cpp, FUSEDRNN_CPU_AMX).
const char* cpu_bfloat16_products();
}  // namespace fusedrnn

namespace {

pybind11::dict build_info() {
  pybind11::dict d;
  d["cpu_isas_compiled"] = fusedrnn::cpu::compiled_isas();
  d["cpu_isa"] = fusedrnn::cpu::active_isa();
#ifdef FUSEDRNN_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = fusedrnn::cuda::compiled_archs();
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
#endif
  d["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                       std::to_string(TORCH_VERSION_MINOR) + "." +
                       std::to_string(TORCH_VERSION_PATCH);
  return d;
}

#ifdef FUSEDRNN_WITH_CUDA
pybind11::dict persistent_traces() {
  const fusedrnn::PersistentTraces taken = fusedrnn::take_persistent_traces();
  pybind11::list records;
  for (const fusedrnn::PersistentTraceRecord& r : taken.records) {
    pybind11::dict d;
    d["kernel"] = r.kernel;
    d["reverse"] = r.reverse;
    d["first_step"] = r.first_step;
    d["end_step"] = r.end_step;
    d["blocks"] = r.blocks;
    d["units"] = r.units;
    d["tensor_cores"] = r.tensor_cores;
    d["staged"] = r.staged;
    d["header"] = r.header;
    d["points"] = r.points;
    pybind11::list values;
    for (const int64_t v : r.values) values.append(v);
    d["values"] = values;
    records.append(d);
  }
  pybind11::dict out;
  out["records"] = records;
  out["dropped"] = taken.dropped;
  return out;
}
#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn: fused recurrent-network kernels (operators under torch.ops.fusedrnn)";
  m.def("build_info", &build_info, "What this build of fusedrnn._C was compiled with.");
  m.def("cpu_single_step_products", &fusedrnn::cpu_single_step_products,
        "Where single steps on CPU take their products now: own, blas by shape, or blas.");
  m.def("cpu_bfloat16_products", &fusedrnn::cpu_bfloat16_products,
        "Where bfloat16 layers on CPU take their products now: amx or float32.");
  m.def("_persistent_pays", &fusedrnn::persistent_pays, pybind11::arg("T"), pybind11::arg("N"),
        pybind11::arg("G"), pybind11::arg("H"), pybind11::arg("projection"),
        pybind11::arg("elem_bytes"), pybind11::arg("tensor_cores"), pybind11::arg("training"),
        "Whether FUSEDRNN_CUDA_PATH=auto runs a layer of these sizes on the persistent path on "
        "CUDA (when its plan takes the layer).");
#ifdef FUSEDRNN_WITH_CUDA
  m.def("_grid_barrier_probe", &fusedrnn::grid_barrier_probe, pybind11::arg("blocks"),
        pybind11::arg("steps"),
        "Launches `steps` grid barriers of the persistent kernels in one cooperative launch of "
        "`blocks` blocks on the current CUDA stream (bench/persistent_floor.py).");
  m.def("_persistent_traces", &persistent_traces,
        "The step traces of the persistent launches since the last call, recorded where "
        "FUSEDRNN_PERSISTENT_TRACE=1 (bench/persistent_trace.py): {'records': oldest first, at "
        "most the last 256; 'dropped': how many older ones were let go}. Waits for the devices "
        "that ran them.");
#endif
}
