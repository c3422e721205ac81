// CPU memory of the layer operators: blocks for the kernels' scratch, and the
// allocator of the layer's large tensors (layer_empty in rnn_layer.h).
#pragma once

#include <cstddef>

namespace fusedrnn {

// A block of at least `bytes`, 64-byte aligned, released with std::free; blocks
// larger than 32 MiB are 2 MiB-aligned and offered transparent huge pages
// (cpu_memory.cpp). Throws on exhaustion.
char* aligned_block(size_t bytes);

}  // namespace fusedrnn
