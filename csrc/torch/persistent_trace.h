// The step traces of the persistent path's launches (FUSEDRNN_PERSISTENT_TRACE=1;
// TracePoint in ../kernels/cuda/rnn_cuda.h has the layout of `values`), in
// plain types, so that fusedrnn._C hands them to Python without the torch API
// (module.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fusedrnn {

struct PersistentTraceRecord {
  std::string kernel;            // e.g. "lstm_persistent_forward_kernel"
  bool reverse = false;          // the layer's reverse direction
  int64_t first_step = 0;        // the launch's steps [first_step, end_step)
  int64_t end_step = 0;
  int64_t blocks = 0, units = 0;  // the plan: blocks, hidden units per block
  bool tensor_cores = false;      // the plan's product
  bool staged = false;            // room in the plan to stage its other operand in shared
                                  //   memory (used where a product's rows are 16-byte pieces)
  int64_t header = 0, points = 0;  // kTraceHeader, kTracePoints
  std::vector<int64_t> values;     // header, then points per step in the order processed
};

struct PersistentTraces {
  std::vector<PersistentTraceRecord> records;  // oldest first
  int64_t dropped = 0;  // older records let go to keep the last kMaxPersistentTraces
};

// The records of the launches traced since the last call (at most the last
// kMaxPersistentTraces), and how many older ones were let go; waits for each
// device that ran them to finish its work (cudaDeviceSynchronize).
PersistentTraces take_persistent_traces();

constexpr size_t kMaxPersistentTraces = 256;

}  // namespace fusedrnn
