// The CPU kernels compiled for one instruction set; the build passes
// -DCPU_CAPABILITY=... and the matching -m flags for this file only.
#include "rnn_cpu_impl.h"

FUSEDRNN_INSTANTIATE_CPU_ISA(float)
FUSEDRNN_INSTANTIATE_CPU_ISA(double)
