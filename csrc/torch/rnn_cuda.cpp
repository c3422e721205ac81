// CUDA implementation of the layer operators (DESIGN.md, standard path): the
// time loop, with the GEMMs through ATen into buffers allocated before the loop
// and the pointwise kernels of csrc/kernels/cuda between them.
//
// Forward, per step s (rows = batch_sizes[t] active rows):
//   Gh = h W_hh^T                 at::mm_out into gh [N, G*H]
//   <cell>_forward kernel         Gx + Gh + biases -> h', c', saved gates
//   (projection) y = r W_hr^T     at::mm_out, then y copied into the state
// with Gx = X W_ih^T computed for a chunk of steps at once (one GEMM over up to
// kGxChunkBytes of rows). Backward, per step in reverse: the pointwise kernel
// gives dG, one GEMM gives the recurrent part of dh; after the loop dX is one
// GEMM over all R rows, dW_ih, dW_hh (and dW_hr) GEMMs over blocks of at most 512
// rows added up (rows_product), the biases column sums of dG, the peepholes a sum
// of per-row accumulators (deterministic, no atomics).
//
// Compiled by the host compiler and includes no cuBLAS header (never
// ATen/cuda/CUDAContext.h), so tools/check_cuda_host.sh can check it against a
// CPU-only torch; every GEMM is an ATen op, so TF32 and the other matmul
// settings of torch.backends apply as they do to nn.*.
//
// Properties the tests rely on:
//   - current stream of the input's device, under a device guard (any stream,
//     any device index);
//   - inside the time loop no device allocation and no host synchronisation:
//     batch_sizes lives on the CPU, buffers are allocated before the loop, so a
//     call can be captured in a CUDA graph (static shapes);
//   - every kernel launch checked, the error naming the kernel.
//
// States: h lives in h_n itself (every row's last write is its final state, so
// h_n needs no gather), c in c_n or, for 16-bit inputs, in a float buffer.
// 16-bit GEMMs take and give the input dtype (cuBLAS accumulates in float, as
// torch.backends.cuda.matmul allows); the pointwise math, the cell state and its
// gradient are float, and the biases are added in float by the kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>

#include "../kernels/cuda/rnn_cuda.h"
#include "path_choice.h"
#include "persistent_trace.h"
#include "rnn_layer.h"

namespace fusedrnn {
namespace {

namespace fc = fusedrnn::cuda;

// Gx of at most this many bytes per chunk of steps: a GEMM of thousands of rows
// is already efficient, and inference memory stays bounded whatever T is.
// FUSEDRNN_CUDA_GX_CHUNK_BYTES overrides it (the tests cut sequences into many
// chunks with it; a chunk always holds at least one step).
constexpr int64_t kGxChunkBytes = int64_t{64} << 20;

// Whether float32 products may use TF32, as ATen decides it for its own cuBLAS
// GEMMs: torch.backends.cuda.matmul.fp32_precision (which allow_tf32 and
// set_float32_matmul_precision also set), unless a NoTF32Guard is active. The
// per-backend precision is read where this torch has it (its legacy getter
// raises once the new API alone was used): as enums (str2backend, str2op), or
// as strings (torch 2.9); else the legacy getter. The overloads rank in that
// order (int, long, ellipsis), and the lookups are dependent, so that a torch
// without an API drops its overload instead of failing to compile.
namespace tf32_lookup {
using namespace at;

template <typename S>
auto matmul_tf32(const S& backend, const S& op, int)
    -> decltype(globalContext().float32Precision(str2backend(backend), str2op(op)), bool()) {
  using Precision = decltype(globalContext().float32Precision(str2backend(backend), str2op(op)));
  return globalContext().float32Precision(str2backend(backend), str2op(op)) == Precision::TF32;
}

template <typename S>
auto matmul_tf32(const S& backend, const S& op, long)
    -> decltype(globalContext().float32Precision(backend, op) == S("tf32"), bool()) {
  return globalContext().float32Precision(backend, op) == S("tf32");
}

template <typename S>
bool matmul_tf32(const S&, const S&, ...) {
  return globalContext().allowTF32CuBLAS();
}
}  // namespace tf32_lookup

bool cublas_allows_tf32() {
  return !at::NoTF32Guard::should_disable_tf32() &&
         tf32_lookup::matmul_tf32(std::string("cuda"), std::string("matmul"), 0);
}

// The first `rows` rows of a state buffer for one step: the buffer itself when
// every row is active (a padded batch, every step), so that a step of the time
// loop makes no view there.
Tensor first_rows(const Tensor& t, int64_t rows) {
  return rows == t.size(0) ? t : t.narrow(0, 0, rows);
}

// Where the standard path's step kernels find the recurrent product (forward Gh)
// or the recurrent dL/dh (backward): its own [rows, gates*H] buffer.
fc::GhLayout full_rows(int64_t H) { return fc::GhLayout{static_cast<int>(H), 0}; }

int64_t gx_chunk_bytes() {
  const char* v = std::getenv("FUSEDRNN_CUDA_GX_CHUNK_BYTES");
  if (v == nullptr || v[0] == '\0') return kGxChunkBytes;
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(v, &end, 10);
  TORCH_CHECK(v[0] >= '0' && v[0] <= '9' && *end == '\0' && errno == 0 && n > 0,
              "FUSEDRNN_CUDA_GX_CHUNK_BYTES must be a positive integer below 2^63, got '",
              v, "'");
  return static_cast<int64_t>(n);
}

template <typename S>
struct Tag {
  using type = S;
};

// The one dtype dispatch: ATen's scalar type to the CUDA element type of the
// same bits (at::Half ~ __half, at::BFloat16 ~ __nv_bfloat16).
template <typename Fn>
void dispatch_dtype(at::ScalarType t, const Fn& fn) {
  switch (t) {
    case at::kFloat: return fn(Tag<float>{});
    case at::kDouble: return fn(Tag<double>{});
    case at::kHalf: return fn(Tag<__half>{});
    case at::kBFloat16: return fn(Tag<__nv_bfloat16>{});
    default: TORCH_CHECK(false, "fusedrnn (CUDA): unsupported dtype ", t);
  }
}

bool wanted(const Tensor& t) { return t.defined() && t.numel() > 0; }

template <typename S>
const S* cptr(const Tensor& t) {
  return wanted(t) ? static_cast<const S*>(t.data_ptr()) : nullptr;
}
template <typename S>
const S* cptr(const OptTensor& t) {
  return t.has_value() ? cptr<S>(*t) : nullptr;
}
template <typename S>
S* mptr(const Tensor& t) {
  return wanted(t) ? static_cast<S*>(t.data_ptr()) : nullptr;
}

// Launchers return cudaGetLastError(); this turns an error into a c10::Error
// through C10_CUDA_CHECK (with its device-assertion notes) and names the kernel.
void check_launch(cudaError_t err, const char* kernel) {
  if (C10_LIKELY(err == cudaSuccess)) return;
  try {
    C10_CUDA_CHECK(err);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "fusedrnn: launch of ", kernel, " failed: ", e.what_without_backtrace());
  }
}


// Gx = X W_ih^T (no bias: the kernels add both biases in the compute type)
// chunk by chunk of steps; chunk(c, gx) for each, gx pointing at the chunk's
// first row of Gx [c.rows, GH], until one returns false.
template <typename S, typename ChunkFn>
void forward_chunks(const LayerInputs& in, const LayerGeometry& g, int64_t GH,
                    const ChunkFn& chunk) {
  const SeqLayout seq = g.layout(in.reverse);
  const Tensor x = in.input.reshape({g.R, g.C});
  const int64_t row_bytes = GH * static_cast<int64_t>(in.input.element_size());
  const int64_t max_rows = std::min(g.R, std::max(g.N, gx_chunk_bytes() / row_bytes));
  const Tensor gx = at::empty({max_rows, GH}, in.input.options());
  const Tensor w_ih_t = in.w_ih.t();
  for (int64_t s0 = 0; s0 < g.T;) {
    const Chunk c = next_chunk(seq, s0, max_rows);
    Tensor gx_rows = gx.narrow(0, 0, c.rows);
    at::mm_out(gx_rows, x.narrow(0, c.row0, c.rows), w_ih_t);
    if (!chunk(c, static_cast<const S*>(gx.data_ptr()))) return;
    s0 = c.s1;
  }
}

// The standard forward time loop every cell shares: step(st, gx) for each step,
// gx pointing at the step's rows of Gx [rows, GH].
template <typename S, typename StepFn>
void forward_steps(const LayerInputs& in, const LayerGeometry& g, int64_t GH, const StepFn& step) {
  const SeqLayout seq = g.layout(in.reverse);
  forward_chunks<S>(in, g, GH, [&](const Chunk& c, const S* gx) {
    for (int64_t s = c.s0; s < c.s1; ++s) {
      const StepInfo st = seq.step(s);
      step(st, gx + (st.offset - c.row0) * GH);
    }
    return true;
  });
}

// ------------------------------------------------------- persistent path
//
// FUSEDRNN_CUDA_PATH selects the path of every layer: "standard", "persistent"
// (an error when the persistent path cannot run the layer, with the reason), or
// "auto" (the default): the persistent path where persistent_pays
// (path_choice.h) says it is the faster one and its plan takes the layer, the
// standard path everywhere else. The rule is asked twice: before planning
// assuming tensor cores for 16-bit types, and after, with the plan's product.

enum class PathChoice { kAuto, kStandard, kPersistent };

PathChoice requested_path() {
  const char* v = std::getenv("FUSEDRNN_CUDA_PATH");
  if (v == nullptr || v[0] == '\0' || std::strcmp(v, "auto") == 0) return PathChoice::kAuto;
  if (std::strcmp(v, "standard") == 0) return PathChoice::kStandard;
  if (std::strcmp(v, "persistent") == 0) return PathChoice::kPersistent;
  TORCH_CHECK(false, "FUSEDRNN_CUDA_PATH must be 'auto', 'standard' or 'persistent', got '", v,
              "'");
}

// FUSEDRNN_PERSISTENT_GRID: how the persistent path spreads a layer's hidden
// units over blocks (fc::PersistentGrid): "auto" (the default; one block where
// the layer's product per step is small), "one" (one block, or the plan
// declines the layer), "many" (slices of units, one block each), or a power of
// two from 1 to 256: that many units a block (for measurements).
int requested_grid() {
  const char* v = std::getenv("FUSEDRNN_PERSISTENT_GRID");
  if (v == nullptr || v[0] == '\0' || std::strcmp(v, "auto") == 0) return fc::kGridAuto;
  if (std::strcmp(v, "one") == 0) return fc::kGridOne;
  if (std::strcmp(v, "many") == 0) return fc::kGridMany;
  int units = 0;
  for (const char* c = v; *c != '\0' && units <= 256; ++c)
    units = *c >= '0' && *c <= '9' ? units * 10 + (*c - '0') : 1000;
  TORCH_CHECK(units >= 1 && units <= 256 && (units & (units - 1)) == 0,
              "FUSEDRNN_PERSISTENT_GRID must be 'auto', 'one', 'many' or a power of two from 1 to "
              "256 (hidden units per block), got '", v, "'");
  return units;
}

// A switch from the environment: "1" on, "0" off, unset or empty `unset`.
bool env_switch(const char* name, bool unset) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return unset;
  if (std::strcmp(v, "1") == 0) return true;
  TORCH_CHECK(std::strcmp(v, "0") == 0, name, " must be '0' or '1', got '", v, "'");
  return false;
}

// FUSEDRNN_PERSISTENT_STAGE: "1" (the default) lets the tensor-core product of
// the persistent kernels stage its other operand (the previous h, r*h, the
// projection's input, dG or dL/dh) in shared memory where the plan has room for
// it; "0" has it load its fragments from global memory (for measurements: the
// results are the same bits).
bool requested_stage() { return env_switch("FUSEDRNN_PERSISTENT_STAGE", true); }

// FUSEDRNN_PERSISTENT_TRACE: "1" records the step trace of every persistent
// launch (TracePoint in rnn_cuda.h; fusedrnn._C._persistent_traces returns
// them, bench/persistent_trace.py turns them into the time of each phase of a
// step); "0" or unset records nothing.
bool requested_trace() { return env_switch("FUSEDRNN_PERSISTENT_TRACE", false); }

struct TraceEntry {
  PersistentTraceRecord record;  // without its values yet
  Tensor values;                 // on the device until taken
};

std::mutex& trace_lock() {
  static std::mutex lock;
  return lock;
}

// Never destroyed: it holds device tensors, which must not be freed at exit.
std::deque<TraceEntry>& trace_entries() {
  static auto* entries = new std::deque<TraceEntry>();
  return *entries;
}

int64_t& traces_dropped() {
  static int64_t dropped = 0;
  return dropped;
}

// The trace of a launch of `plan` over steps [a.s0, a.s1), its buffer in
// a.trace; none (a.trace null) when tracing is off.
template <typename Args>
std::optional<TraceEntry> begin_trace(Args& a, const fc::PersistentPlan& plan, const char* kernel,
                                      bool reverse, const at::Device& device) {
  a.trace = nullptr;
  if (!requested_trace()) return std::nullopt;
  const int64_t steps = a.s1 - a.s0;
  TraceEntry e;
  e.values = at::zeros({fc::kTraceHeader + steps * fc::kTracePoints},
                       at::TensorOptions().dtype(at::kLong).device(device));
  e.record.kernel = kernel;
  e.record.reverse = reverse;
  e.record.first_step = a.s0;
  e.record.end_step = a.s1;
  e.record.blocks = plan.blocks;
  e.record.units = plan.lay.units;
  e.record.tensor_cores = plan.lay.mma != 0;
  e.record.staged = plan.lay.xs_off > 0;
  e.record.header = fc::kTraceHeader;
  e.record.points = fc::kTracePoints;
  a.trace = reinterpret_cast<long long*>(e.values.data_ptr<int64_t>());
  return e;
}

// Keeps the trace of a launch that started, for take_persistent_traces (the
// last kMaxPersistentTraces, counting those let go).
void keep_trace(std::optional<TraceEntry>& e) {
  if (!e.has_value()) return;
  const std::lock_guard<std::mutex> guard(trace_lock());
  auto& entries = trace_entries();
  entries.push_back(std::move(*e));
  if (entries.size() > kMaxPersistentTraces) {
    entries.pop_front();
    ++traces_dropped();
  }
}

// Whether this layer tries the persistent path (its plan may still decline it,
// see persistent_plan); raises when the path is forced and cannot run the layer.
bool take_persistent(const LayerInputs& in, const LayerGeometry& g, bool training,
                     cudaStream_t stream) {
  const PathChoice path = requested_path();
  requested_grid();  // bad values of these three are an error on either path
  requested_stage();
  const bool trace = requested_trace();
  if (path == PathChoice::kStandard) return false;
  if (path == PathChoice::kAuto && !persistent_pays(g.T, g.N, g.G, g.H, in.w_hr.has_value(),
                                                     in.input.element_size(), true, training))
    return false;
  if (g.packed || trace) {
    bool capturing = false;
    check_launch(fc::stream_is_capturing(stream, capturing), "stream_is_capturing");
    if (capturing) {
      TORCH_CHECK(path == PathChoice::kAuto,
                  g.packed ? "fusedrnn: FUSEDRNN_CUDA_PATH=persistent, but the persistent path does "
                             "not run a packed sequence inside CUDA graph capture (its layout is "
                             "copied to the device)"
                           : "fusedrnn: FUSEDRNN_CUDA_PATH=persistent, but FUSEDRNN_PERSISTENT_TRACE=1 "
                             "does not record inside CUDA graph capture (each launch allocates its "
                             "trace)");
      return false;
    }
  }
  return true;
}

// The sequence layout with its per-step arrays in device memory (padded: none):
// both arrays in one copy from pinned memory, queued on the current stream
// without a host synchronisation (the caching host allocator keeps the pinned
// block until the copy has run).
struct DeviceSeq {
  Tensor arrays;
  SeqLayout seq;
  DeviceSeq(const LayerGeometry& g, bool reverse, const at::Device& device) : seq(g.layout(reverse)) {
    if (seq.batch_sizes == nullptr) return;
    Tensor host = at::empty({2 * g.T + 1},
                            at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()));
    int64_t* h = host.data_ptr<int64_t>();
    std::memcpy(h, seq.batch_sizes, sizeof(int64_t) * g.T);
    std::memcpy(h + g.T, seq.offsets, sizeof(int64_t) * (g.T + 1));
    arrays = host.to(device, at::kLong, /*non_blocking=*/true);
    seq.batch_sizes = arrays.data_ptr<int64_t>();
    seq.offsets = seq.batch_sizes + g.T;
  }
};

// The launch plan of a persistent kernel; float32 products may use TF32 where
// torch.backends.cuda.matmul allows it, as the standard path's GEMMs do. False
// when the kernel cannot hold the layer (an error with the reason when the path
// is forced) or, under auto, when its product runs on CUDA cores where the rule
// wants tensor cores: the standard path's turn.
template <typename S, typename Args, typename PlanFn>
bool persistent_plan(const LayerInputs& in, const LayerGeometry& g, bool training, Args& a,
                     const PlanFn& plan_fn, const char* kernel, fc::PersistentPlan& plan) {
  a.tf32 = cublas_allows_tf32();
  a.grid = requested_grid();
  a.stage = requested_stage();
  check_launch(plan_fn(a, plan), kernel);
  if (plan.why == nullptr)
    return requested_path() == PathChoice::kPersistent ||
           persistent_pays(g.T, g.N, g.G, g.H, in.w_hr.has_value(), in.input.element_size(),
                           plan.lay.mma != 0, training);
  TORCH_CHECK(requested_path() != PathChoice::kPersistent,
              "fusedrnn: FUSEDRNN_CUDA_PATH=persistent, but the persistent path does not run "
              "this layer (a batch of ", a.seq.N, " rows, hidden size ", a.base.H, "): ",
              plan.why);
  return false;
}

// Whether the device refused a persistent kernel's launch for its size
// (cudaErrorCooperativeLaunchTooLarge, which the launch leaves as the last
// error: taken here): it runs fewer blocks at once than the plan counted from
// its multiprocessor count and the kernel's occupancy, as the runtime defines
// that limit, so this should not happen; it is the safety net where a context
// runs fewer. Nothing ran. Under auto the layer goes to the standard path, with
// a warning once; forced, it is an error.
bool refused_for_size(cudaError_t err, const fc::PersistentPlan& plan, const char* kernel) {
  if (err != cudaErrorCooperativeLaunchTooLarge) return false;
  const cudaError_t taken = fc::take_last_error();
  if (taken != err) check_launch(taken, kernel);
  TORCH_CHECK(requested_path() != PathChoice::kPersistent,
              "fusedrnn: FUSEDRNN_CUDA_PATH=persistent, but the device refused the "
              "cooperative launch of ", plan.blocks, " blocks of ", kernel,
              " (cudaErrorCooperativeLaunchTooLarge): it runs fewer at once than the plan "
              "counted from its multiprocessor count and the kernel's occupancy");
  TORCH_WARN_ONCE("fusedrnn: the device refused the cooperative launch of ", plan.blocks,
                  " blocks of ", kernel,
                  " (cudaErrorCooperativeLaunchTooLarge): it runs fewer at once than the plan "
                  "counted from its multiprocessor count and the kernel's occupancy; such layers "
                  "run on the standard path");
  return true;
}

// The persistent forward of a layer: a.base set up by the caller (row-0
// pointers); runs one launch per chunk of steps of Gx. h_n [N, H] gets each
// row's last h'. False, having run nothing, when the plan declines the layer or
// the device refuses its first launch (refused_for_size).
template <typename S, typename P, typename PlanFn, typename LaunchFn>
bool persistent_forward(const LayerInputs& in, const LayerGeometry& g, bool training, int64_t GH,
                        fc::PersistentArgs<S, P>& a, const Tensor& h_n, const PlanFn& plan_fn,
                        const LaunchFn& launch_fn, const char* kernel, cudaStream_t stream) {
  const int64_t N = g.N;
  const DeviceSeq ds(g, in.reverse, in.input.device());
  const auto opts = in.input.options();
  const Tensor hbuf = at::empty({2, N, g.P}, opts);
  hbuf.select(0, 0).copy_(in.h0);
  hbuf.select(0, 1).copy_(in.h0);
  a.seq = ds.seq;
  a.w_hh = cptr<S>(in.w_hh);
  a.hbuf = mptr<S>(hbuf);
  a.h_n = mptr<S>(h_n);
  fc::PersistentPlan plan;
  if (!persistent_plan<S>(in, g, training, a, plan_fn, kernel, plan)) return false;
  bool refused = false;
  forward_chunks<S>(in, g, GH, [&](const Chunk& c, const S* gx) {
    a.s0 = c.s0;
    a.s1 = c.s1;
    a.gx = gx;
    a.gx_row0 = c.row0;
    std::optional<TraceEntry> trace = begin_trace(a, plan, kernel, in.reverse, in.input.device());
    const cudaError_t err = launch_fn(a, plan, stream);
    if (c.s0 == 0 && refused_for_size(err, plan, kernel)) {
      refused = true;
      return false;
    }
    check_launch(err, kernel);
    keep_trace(trace);
    return true;
  });
  return !refused;
}

// The persistent backward time loop of a layer: one launch over all steps;
// dh_state [N, H] holds dL/dh_n on entry and dL/dh0 (the recurrent part, and the
// direct part for GRU) on exit. False, having run nothing, when the plan
// declines the layer or the device refuses its launch (refused_for_size).
template <typename S, typename P, typename PlanFn, typename LaunchFn>
bool persistent_backward(const LayerInputs& in, const LayerGeometry& g,
                         fc::PersistentArgs<S, P>& a, const Tensor& dh_state,
                         const PlanFn& plan_fn, const LaunchFn& launch_fn, const char* kernel,
                         cudaStream_t stream) {
  const DeviceSeq ds(g, in.reverse, in.input.device());
  a.seq = ds.seq;
  a.s0 = 0;
  a.s1 = g.T;
  a.w_hh = cptr<S>(in.w_hh);
  a.dh = mptr<S>(dh_state);
  fc::PersistentPlan plan;
  if (!persistent_plan<S>(in, g, true, a, plan_fn, kernel, plan)) return false;
  std::optional<TraceEntry> trace = begin_trace(a, plan, kernel, in.reverse, in.input.device());
  const cudaError_t err = launch_fn(a, plan, stream);
  if (refused_for_size(err, plan, kernel)) return false;
  check_launch(err, kernel);
  keep_trace(trace);
  return true;
}

// The gradient buffer that the backward loop starts from: dL/dh_n (or dL/dc_n)
// or zeros.
void init_grad_state(Tensor& state, const OptTensor& grad) {
  if (grad.has_value())
    state.copy_(*grad);
  else
    state.zero_();
}

// dst = a^T b (accumulate: dst += a^T b) for a [R, M], b [R, K] with R = T*N,
// every row of the sequence: a weight gradient. One GEMM over all R rows may sum
// each output in one float32 chain (the emulation's host BLAS does, bit for bit
// the same when blocks of rows go through addmm_, which accumulates onto dst; so
// may a cuBLAS kernel without split-K), and its error grew with R, to 3-10x the
// float32 reference's (per-step sums) at R >= 4200. float32 and float64 take
// blocks of at most kChainRows rows, each block's product into a scratch of
// dst's size, added to dst; 16-bit GEMMs accumulate in float already.
constexpr int64_t kChainRows = 512;

void rows_product(Tensor dst, const Tensor& a, const Tensor& b, bool accumulate) {
  const int64_t R = a.size(0);
  const bool chained = a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble;
  if (!chained || R <= kChainRows) {
    if (accumulate)
      dst.addmm_(a.t(), b);
    else
      at::mm_out(dst, a.t(), b);
    return;
  }
  Tensor part = at::empty(dst.sizes(), dst.options());
  for (int64_t r0 = 0; r0 < R; r0 += kChainRows) {
    const int64_t n = std::min(kChainRows, R - r0);
    const Tensor at_rows = a.narrow(0, r0, n).t();
    const Tensor b_rows = b.narrow(0, r0, n);
    if (r0 == 0 && !accumulate) {
      at::mm_out(dst, at_rows, b_rows);
    } else {
      at::mm_out(part, at_rows, b_rows);
      dst.add_(part);
    }
  }
}

// Columns [col, col + n) of dG belong to rows [wrow, wrow + n) of W_ih and b_ih.
struct Block {
  int64_t col, wrow, n;
};

// dX = dG W_ih and dW_ih = dG^T X over all rows, block by block.
void input_side_grads(const LayerInputs& in, const LayerGeometry& g, const Tensor& dG,
                      std::initializer_list<Block> blocks, GradResult& out) {
  const Tensor x = in.input.reshape({g.R, g.C});
  if (wanted(out.grad_input)) {
    Tensor dx = out.grad_input.view({g.R, g.C});
    bool first = true;
    for (const Block& b : blocks) {
      const Tensor dGb = dG.narrow(1, b.col, b.n);
      const Tensor w = in.w_ih.narrow(0, b.wrow, b.n);
      if (first)
        at::mm_out(dx, dGb, w);
      else
        dx.addmm_(dGb, w);
      first = false;
    }
  }
  if (wanted(out.grad_w_ih)) {
    for (const Block& b : blocks) {
      rows_product(out.grad_w_ih.narrow(0, b.wrow, b.n), dG.narrow(1, b.col, b.n), x, false);
    }
  }
}

// db_ih (blocks as for W_ih) and db_hh (the first hh_cols columns of dG): column
// sums of dG, accumulated in the compute type.
void bias_grads(const Tensor& dG, std::initializer_list<Block> ih_blocks, int64_t hh_cols,
                GradResult& out) {
  if (!wanted(out.grad_b_ih) && !wanted(out.grad_b_hh)) return;
  const Tensor dsum = at::sum(dG, at::IntArrayRef{0}, false, compute_dtype(dG.scalar_type()));
  if (wanted(out.grad_b_ih))
    for (const Block& b : ih_blocks)
      out.grad_b_ih.narrow(0, b.wrow, b.n).copy_(dsum.narrow(0, b.col, b.n));
  if (wanted(out.grad_b_hh)) out.grad_b_hh.copy_(dsum.narrow(0, 0, hh_cols));
}

// dw = dGb^T Hprev, Hprev [R, K] the recurrent input of every row: the rows the
// backward kernels gathered (packed sequences), or for padded sequences the
// output shifted by one step (N rows), with h0 for the first processed step.
void recurrent_weight_grad(Tensor dw, const Tensor& dGb, const Tensor& hprev, const Tensor& y,
                           const Tensor& h0, const LayerGeometry& g, bool reverse) {
  if (hprev.defined()) {
    rows_product(dw, dGb, hprev, false);
    return;
  }
  const int64_t N = g.N, R = g.R;
  rows_product(dw, dGb.narrow(0, reverse ? R - N : 0, N), h0, false);
  if (R > N)
    rows_product(dw, dGb.narrow(0, reverse ? 0 : N, R - N), y.narrow(0, reverse ? N : 0, R - N),
                 true);
}

// Where the backward kernels gather Hprev: only packed sequences need it, and
// only for dW_hh. all: the row-0 pointers (persistent path), at(st): one step.
template <typename S>
fc::PrevRows<S> prev_rows_all(const Tensor& hprev, const Tensor& y, const Tensor& h0,
                              int64_t width) {
  fc::PrevRows<S> pr;
  if (!hprev.defined()) return pr;
  pr.prev = cptr<S>(y);
  pr.init = cptr<S>(h0);
  pr.out = mptr<S>(hprev);
  pr.width = width;
  return pr;
}

template <typename S>
fc::PrevRows<S> prev_rows(const Tensor& hprev, const Tensor& y, const Tensor& h0,
                          const StepInfo& st, int64_t width) {
  return fc::prev_rows_at(prev_rows_all<S>(hprev, y, h0, width), st);
}

// ------------------------------------------------------------------- LSTM

template <typename S>
void lstm_forward_cuda(const LayerInputs& in, const LayerGeometry& g, bool training,
                       ForwardResult& out, cudaStream_t stream) {
  using A = acc_t<S>;
  constexpr bool kSameAcc = std::is_same<S, A>::value;
  const int64_t N = g.N, H = g.H, P = g.P, GH = g.G * H;
  const bool proj = in.w_hr.has_value();
  const auto opts = in.input.options();

  Tensor h_state = out.h_n;  // [N, P]
  h_state.copy_(in.h0);
  Tensor c_state = kSameAcc ? out.c_n : at::empty({N, H}, opts.dtype(at::kFloat));
  c_state.copy_(*in.c0);
  const Tensor r_scratch = proj && !training ? at::empty({N, H}, opts) : Tensor();
  const Tensor y = out.output.view({g.R, P});
  const Tensor w_hh_t = in.w_hh.t();
  const Tensor w_hr_t = proj ? in.w_hr->t() : Tensor();

  fc::LstmForwardParams<S> base;
  base.H = H;
  base.coupled = in.cell.coupled;
  base.b_ih = cptr<S>(in.b_ih);
  base.b_hh = cptr<S>(in.b_hh);
  base.w_ch = cptr<S>(in.w_ch);
  base.c = mptr<A>(c_state);
  base.gl = full_rows(H);
  base.h_state = proj ? nullptr : mptr<S>(h_state);

  if (take_persistent(in, g, training, stream)) {
    fc::LstmPersistentForward<S> a;
    a.base = base;
    a.base.h = mptr<S>(y);
    a.base.ld_h = H;
    if (proj) {
      a.w_hr = cptr<S>(in.w_hr);
      a.proj_size = P;
      a.y = mptr<S>(y);
      if (training)
        a.hr_rows = mptr<S>(out.saved.proj_in);
      else
        a.hr = mptr<S>(r_scratch);
    }
    if (training) {
      a.base.gates = mptr<S>(out.saved.gates);
      a.base.states = mptr<S>(out.saved.states);
    }
    if (persistent_forward(in, g, training, GH, a, out.h_n, fc::lstm_persistent_forward_plan<S>,
                           fc::lstm_persistent_forward_launch<S>, "lstm_persistent_forward_kernel",
                           stream)) {
      if (!kSameAcc) out.c_n.copy_(c_state);
      return;
    }
  }

  const Tensor gh = at::empty({N, GH}, opts);
  base.gh = mptr<S>(gh);
  forward_steps<S>(in, g, GH, [&](const StepInfo& st, const S* gx) {
    const int64_t rows = st.rows;
    Tensor gh_rows = first_rows(gh, rows);
    at::mm_out(gh_rows, first_rows(h_state, rows), w_hh_t);
    // h' = o*tanh(c') goes to the output, or to the projection's input.
    const Tensor h_rows = !proj    ? Tensor()
                          : training ? out.saved.proj_in.narrow(0, st.offset, rows)
                                     : first_rows(r_scratch, rows);
    fc::LstmForwardParams<S> p = base;
    p.rows = rows;
    p.gx = gx;
    p.h = proj ? mptr<S>(h_rows) : mptr<S>(y) + st.offset * P;
    p.ld_h = proj ? H : P;
    if (training) {
      p.gates = mptr<S>(out.saved.gates) + st.offset * GH;
      p.states = mptr<S>(out.saved.states) + st.offset * H;
    }
    check_launch(fc::lstm_forward_launch<S>(p, stream), "lstm_forward_kernel");
    if (proj) {
      Tensor y_rows = y.narrow(0, st.offset, rows);
      at::mm_out(y_rows, h_rows, w_hr_t);
      first_rows(h_state, rows).copy_(y_rows);
    }
  });
  if (!kSameAcc) out.c_n.copy_(c_state);
}

template <typename S>
void lstm_backward_cuda(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                        GradResult& out, cudaStream_t stream) {
  using A = acc_t<S>;
  constexpr bool kSameAcc = std::is_same<S, A>::value;
  const int64_t N = g.N, H = g.H, P = g.P, G = g.G, GH = G * H, R = g.R;
  const bool proj = in.w_hr.has_value();
  const auto opts = in.input.options();
  const auto acc_opts = opts.dtype(compute_dtype(in.input.scalar_type()));
  const SeqLayout seq = g.layout(in.reverse);
  const Tensor dy = gi.grad_output.view({R, P});
  const Tensor y = gi.output.view({R, P});

  const Tensor dG = at::empty({R, GH}, opts);
  Tensor dh_state = out.grad_h0;  // [N, P]: the recurrent dL/dh, at the end dL/dh0
  init_grad_state(dh_state, gi.grad_h_n);
  Tensor dc_state = kSameAcc ? out.grad_c0 : at::empty({N, H}, acc_opts);
  init_grad_state(dc_state, gi.grad_c_n);
  const bool want_wch = wanted(out.grad_w_ch);
  const Tensor dwch_rows = want_wch ? at::zeros({N, (G - 1) * H}, acc_opts) : Tensor();
  // With a projection: dht = dy + dh (kept for dW_hr = dht^T proj_in), dr = dht W_hr.
  const bool want_whr = proj && wanted(out.grad_w_hr);
  const Tensor dht = proj ? at::empty({want_whr ? R : N, P}, opts) : Tensor();
  const Tensor dr = proj ? at::empty({N, H}, opts) : Tensor();
  const bool want_whh = wanted(out.grad_w_hh);
  const Tensor hprev = want_whh && g.packed ? at::empty({R, P}, opts) : Tensor();

  fc::LstmBackwardParams<S> base;
  base.H = H;
  base.coupled = in.cell.coupled;
  base.c0 = cptr<S>(*in.c0);
  base.w_ch = cptr<S>(in.w_ch);
  base.dc = mptr<A>(dc_state);
  base.dw_ch_rows = mptr<A>(dwch_rows);
  base.rl = full_rows(H);
  const S* gates = cptr<S>(gi.saved.gates);
  const S* states = cptr<S>(gi.saved.states);

  bool persistent = false;
  if (take_persistent(in, g, true, stream)) {
    fc::LstmPersistentBackward<S> a;
    a.base = base;
    a.base.dh = cptr<S>(dy);
    a.base.ld_dh = P;
    if (proj) {
      a.w_hr = cptr<S>(in.w_hr);
      a.proj_size = P;
      a.dy = cptr<S>(dy);
      a.dht = mptr<S>(dht);
      a.dht_rows = want_whr;
      a.dr = mptr<S>(dr);
    }
    a.base.gates = gates;
    a.base.c_new = states;
    a.base.dG = mptr<S>(dG);
    a.base.hprev = prev_rows_all<S>(hprev, y, in.h0, P);
    persistent = persistent_backward(in, g, a, dh_state, fc::lstm_persistent_backward_plan<S>,
                                     fc::lstm_persistent_backward_launch<S>,
                                     "lstm_persistent_backward_kernel", stream);
  }
  if (!persistent) {
    for (int64_t s = g.T - 1; s >= 0; --s) {
      const StepInfo st = seq.step(s);
      const int64_t rows = st.rows;
      Tensor dh_rows = first_rows(dh_state, rows);
      fc::LstmBackwardParams<S> p = base;
      p.rows = rows;
      p.split = st.split;
      if (proj) {
        Tensor d = dht.narrow(0, want_whr ? st.offset : 0, rows);
        at::add_out(d, dy.narrow(0, st.offset, rows), dh_rows);
        Tensor dr_rows = first_rows(dr, rows);
        at::mm_out(dr_rows, d, *in.w_hr);
        p.dh = mptr<S>(dr);
        p.ld_dh = H;
      } else {
        p.dh = cptr<S>(dy) + st.offset * P;
        p.ld_dh = P;
        p.dh_rec = mptr<S>(dh_state);
      }
      p.gates = gates + st.offset * GH;
      p.c_new = states + st.offset * H;
      p.c_prev = st.split > 0 ? states + st.prev_offset * H : nullptr;
      p.dG = mptr<S>(dG) + st.offset * GH;
      p.hprev = prev_rows<S>(hprev, y, in.h0, st, P);
      check_launch(fc::lstm_backward_launch<S>(p, stream), "lstm_backward_kernel");
      at::mm_out(dh_rows, dG.narrow(0, st.offset, rows), in.w_hh);
    }
  }
  if (!kSameAcc) out.grad_c0.copy_(dc_state);

  input_side_grads(in, g, dG, {{0, 0, GH}}, out);
  bias_grads(dG, {{0, 0, GH}}, GH, out);
  if (want_whh) recurrent_weight_grad(out.grad_w_hh, dG, hprev, y, in.h0, g, in.reverse);
  if (want_wch) out.grad_w_ch.copy_(dwch_rows.sum(0));
  if (want_whr) rows_product(out.grad_w_hr, dht, gi.saved.proj_in, false);
}

// -------------------------------------------------------------------- GRU

template <typename S>
void gru_forward_cuda(const LayerInputs& in, const LayerGeometry& g, bool training,
                      ForwardResult& out, cudaStream_t stream) {
  const int64_t N = g.N, H = g.H;
  const auto opts = in.input.options();
  Tensor h_state = out.h_n;  // [N, H]
  h_state.copy_(in.h0);
  const Tensor y = out.output.view({g.R, H});

  fc::GruForwardParams<S> base;
  base.H = H;
  base.b_ih = cptr<S>(in.b_ih);
  base.b_hh = cptr<S>(in.b_hh);
  base.h_in = mptr<S>(h_state);
  base.h = mptr<S>(h_state);
  base.gl = full_rows(H);

  // reset_before: r*h feeds the W_hn product; training, it is written straight
  // into the saved states.
  if (take_persistent(in, g, training, stream)) {
    fc::GruPersistentForward<S> a;
    a.base = base;
    a.reset_after = in.cell.reset_after;
    a.base.y = mptr<S>(y);
    if (training) {
      a.base.gates = mptr<S>(out.saved.gates);
      a.base.ld_z = 3 * H;
    }
    const bool rb = !in.cell.reset_after;
    const Tensor z_scratch = rb && !training ? at::empty({N, H}, opts) : Tensor();
    const Tensor rh = rb && !training ? at::empty({N, H}, opts) : Tensor();
    a.base.z = mptr<S>(z_scratch);
    if (!training) a.base.ld_z = H;
    a.rh = mptr<S>(rh);
    a.rh_rows = rb && training ? mptr<S>(out.saved.states) : nullptr;
    if (persistent_forward(in, g, training, 3 * H, a, out.h_n, fc::gru_persistent_forward_plan<S>,
                           fc::gru_persistent_forward_launch<S>, "gru_persistent_forward_kernel",
                           stream))
      return;
  }

  if (in.cell.reset_after) {
    const Tensor gh = at::empty({N, 3 * H}, opts);
    const Tensor w_hh_t = in.w_hh.t();
    forward_steps<S>(in, g, 3 * H, [&](const StepInfo& st, const S* gx) {
      Tensor gh_rows = first_rows(gh, st.rows);
      at::mm_out(gh_rows, first_rows(h_state, st.rows), w_hh_t);
      fc::GruForwardParams<S> p = base;
      p.rows = st.rows;
      p.gx = gx;
      p.gh = mptr<S>(gh);
      p.y = mptr<S>(y) + st.offset * H;
      p.gates = training ? mptr<S>(out.saved.gates) + st.offset * 4 * H : nullptr;
      check_launch(fc::gru_forward_launch<S>(p, stream), "gru_forward_kernel");
    });
    return;
  }

  const Tensor gh_rz = at::empty({N, 2 * H}, opts);
  const Tensor gh_n = at::empty({N, H}, opts);
  const Tensor rh = training ? Tensor() : at::empty({N, H}, opts);
  const Tensor z_scratch = training ? Tensor() : at::empty({N, H}, opts);
  const Tensor w_rz_t = in.w_hh.narrow(0, 0, 2 * H).t();
  const Tensor w_n_t = in.w_hh.narrow(0, 2 * H, H).t();
  forward_steps<S>(in, g, 3 * H, [&](const StepInfo& st, const S* gx) {
    const int64_t rows = st.rows;
    Tensor gh_rz_rows = first_rows(gh_rz, rows);
    at::mm_out(gh_rz_rows, first_rows(h_state, rows), w_rz_t);
    const Tensor rh_rows =
        training ? out.saved.states.narrow(0, st.offset, rows) : first_rows(rh, rows);
    fc::GruForwardParams<S> p = base;
    p.rows = rows;
    p.gx = gx;
    p.gh = mptr<S>(gh_rz);
    p.y = mptr<S>(y) + st.offset * H;
    if (training) {
      p.gates = mptr<S>(out.saved.gates) + st.offset * 3 * H;
      p.z = p.gates + H;
      p.ld_z = 3 * H;
    } else {
      p.z = mptr<S>(z_scratch);
      p.ld_z = H;
    }
    p.rh = mptr<S>(rh_rows);
    check_launch(fc::gru_reset_before_forward_rz_launch<S>(p, stream),
                 "gru_reset_before_forward_rz_kernel");
    Tensor gh_n_rows = first_rows(gh_n, rows);
    at::mm_out(gh_n_rows, rh_rows, w_n_t);
    p.gh = mptr<S>(gh_n);
    check_launch(fc::gru_reset_before_forward_n_launch<S>(p, stream),
                 "gru_reset_before_forward_n_kernel");
  });
}

template <typename S>
void gru_backward_cuda(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                       GradResult& out, cudaStream_t stream) {
  const int64_t N = g.N, H = g.H, R = g.R;
  const bool reset_after = in.cell.reset_after;
  // dG: (r, z, hn, xn) reset_after, (r, z, n) reset_before (as on the CPU).
  const int64_t ldg = reset_after ? 4 * H : 3 * H;
  const auto opts = in.input.options();
  const SeqLayout seq = g.layout(in.reverse);
  const Tensor dy = gi.grad_output.view({R, H});
  const Tensor y = gi.output.view({R, H});
  const Tensor dG = at::empty({R, ldg}, opts);
  Tensor dh_state = out.grad_h0;
  init_grad_state(dh_state, gi.grad_h_n);
  const bool want_whh = wanted(out.grad_w_hh);
  const Tensor hprev = want_whh && g.packed ? at::empty({R, H}, opts) : Tensor();
  const Tensor drh = reset_after ? Tensor() : at::empty({N, H}, opts);
  const Tensor w_rz = in.w_hh.narrow(0, 0, 2 * H);
  const Tensor w_n = in.w_hh.narrow(0, 2 * H, H);

  fc::GruBackwardParams<S> base;
  base.H = H;
  base.dh = mptr<S>(dh_state);
  base.dl = full_rows(H);
  base.h0 = cptr<S>(in.h0);
  base.drh = cptr<S>(drh);
  const S* gates = cptr<S>(gi.saved.gates);

  bool persistent = false;
  if (take_persistent(in, g, true, stream)) {
    fc::GruPersistentBackward<S> a;
    a.base = base;
    a.reset_after = reset_after;
    a.base.dy = cptr<S>(dy);
    a.base.gates = gates;
    a.base.h_prev = cptr<S>(y);
    a.base.dG = mptr<S>(dG);
    a.base.hprev = prev_rows_all<S>(hprev, y, in.h0, H);
    a.rh = mptr<S>(drh);
    persistent = persistent_backward(in, g, a, dh_state, fc::gru_persistent_backward_plan<S>,
                                     fc::gru_persistent_backward_launch<S>,
                                     "gru_persistent_backward_kernel", stream);
  }
  if (!persistent) {
    for (int64_t s = g.T - 1; s >= 0; --s) {
      const StepInfo st = seq.step(s);
      const int64_t rows = st.rows;
      Tensor dh_rows = first_rows(dh_state, rows);
      const Tensor dG_rows = dG.narrow(0, st.offset, rows);
      fc::GruBackwardParams<S> p = base;
      p.rows = rows;
      p.split = st.split;
      p.dy = cptr<S>(dy) + st.offset * H;
      p.gates = gates + st.offset * ldg;
      p.h_prev = st.split > 0 ? cptr<S>(y) + st.prev_offset * H : nullptr;
      p.dG = mptr<S>(dG) + st.offset * ldg;
      p.hprev = prev_rows<S>(hprev, y, in.h0, st, H);
      if (reset_after) {
        check_launch(fc::gru_backward_launch<S>(p, stream), "gru_backward_kernel");
        dh_rows.addmm_(dG_rows.narrow(1, 0, 3 * H), in.w_hh);
      } else {
        check_launch(fc::gru_reset_before_backward_zn_launch<S>(p, stream),
                     "gru_reset_before_backward_zn_kernel");
        Tensor drh_rows = first_rows(drh, rows);
        at::mm_out(drh_rows, dG_rows.narrow(1, 2 * H, H), w_n);
        check_launch(fc::gru_reset_before_backward_r_launch<S>(p, stream),
                     "gru_reset_before_backward_r_kernel");
        dh_rows.addmm_(dG_rows.narrow(1, 0, 2 * H), w_rz);
      }
    }
  }

  if (reset_after) {
    // W_ih's n rows take the input-side gradient xn, W_hh's the recurrent hn.
    input_side_grads(in, g, dG, {{0, 0, 2 * H}, {3 * H, 2 * H, H}}, out);
    bias_grads(dG, {{0, 0, 2 * H}, {3 * H, 2 * H, H}}, 3 * H, out);
    if (want_whh)
      recurrent_weight_grad(out.grad_w_hh, dG.narrow(1, 0, 3 * H), hprev, y, in.h0, g,
                            in.reverse);
  } else {
    input_side_grads(in, g, dG, {{0, 0, 3 * H}}, out);
    bias_grads(dG, {{0, 0, 3 * H}}, 3 * H, out);
    if (want_whh) {
      recurrent_weight_grad(out.grad_w_hh.narrow(0, 0, 2 * H), dG.narrow(1, 0, 2 * H), hprev, y,
                            in.h0, g, in.reverse);
      // W_hn multiplies r*h, the saved states.
      rows_product(out.grad_w_hh.narrow(0, 2 * H, H), dG.narrow(1, 2 * H, H), gi.saved.states,
                   false);
    }
  }
}

// -------------------------------------------------------------------- RNN

template <typename S>
void rnn_forward_cuda(const LayerInputs& in, const LayerGeometry& g, bool training,
                      ForwardResult& out, cudaStream_t stream) {
  const int64_t N = g.N, H = g.H;
  Tensor h_state = out.h_n;
  h_state.copy_(in.h0);
  const Tensor y = out.output.view({g.R, H});
  const Tensor w_hh_t = in.w_hh.t();
  fc::RnnForwardParams<S> base;
  base.H = H;
  base.relu = in.cell.kind == CellKind::kRnnRelu;
  base.b_ih = cptr<S>(in.b_ih);
  base.b_hh = cptr<S>(in.b_hh);
  base.gl = full_rows(H);
  base.h = mptr<S>(h_state);
  if (take_persistent(in, g, training, stream)) {
    fc::RnnPersistentForward<S> a;
    a.base = base;
    a.base.y = mptr<S>(y);
    if (persistent_forward(in, g, training, H, a, out.h_n, fc::rnn_persistent_forward_plan<S>,
                           fc::rnn_persistent_forward_launch<S>, "rnn_persistent_forward_kernel",
                           stream))
      return;
  }
  const Tensor gh = at::empty({N, H}, in.input.options());
  base.gh = mptr<S>(gh);
  forward_steps<S>(in, g, H, [&](const StepInfo& st, const S* gx) {
    Tensor gh_rows = first_rows(gh, st.rows);
    at::mm_out(gh_rows, first_rows(h_state, st.rows), w_hh_t);
    fc::RnnForwardParams<S> p = base;
    p.rows = st.rows;
    p.gx = gx;
    p.y = mptr<S>(y) + st.offset * H;
    check_launch(fc::rnn_forward_launch<S>(p, stream), "rnn_forward_kernel");
  });
}

template <typename S>
void rnn_backward_cuda(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                       GradResult& out, cudaStream_t stream) {
  const int64_t H = g.H, R = g.R;
  const SeqLayout seq = g.layout(in.reverse);
  const Tensor dy = gi.grad_output.view({R, H});
  const Tensor y = gi.output.view({R, H});
  const Tensor dG = at::empty({R, H}, in.input.options());
  Tensor dh_state = out.grad_h0;
  init_grad_state(dh_state, gi.grad_h_n);
  const bool want_whh = wanted(out.grad_w_hh);
  const Tensor hprev = want_whh && g.packed ? at::empty({R, H}, in.input.options()) : Tensor();

  fc::RnnBackwardParams<S> base;
  base.H = H;
  base.relu = in.cell.kind == CellKind::kRnnRelu;
  base.dh = cptr<S>(dh_state);
  base.dl = full_rows(H);
  bool persistent = false;
  if (take_persistent(in, g, true, stream)) {
    fc::RnnPersistentBackward<S> a;
    a.base = base;
    a.base.dy = cptr<S>(dy);
    a.base.y = cptr<S>(y);
    a.base.dG = mptr<S>(dG);
    a.base.hprev = prev_rows_all<S>(hprev, y, in.h0, H);
    persistent = persistent_backward(in, g, a, dh_state, fc::rnn_persistent_backward_plan<S>,
                                     fc::rnn_persistent_backward_launch<S>,
                                     "rnn_persistent_backward_kernel", stream);
  }
  if (!persistent) {
    for (int64_t s = g.T - 1; s >= 0; --s) {
      const StepInfo st = seq.step(s);
      fc::RnnBackwardParams<S> p = base;
      p.rows = st.rows;
      p.split = st.split;
      p.dy = cptr<S>(dy) + st.offset * H;
      p.y = cptr<S>(y) + st.offset * H;
      p.dG = mptr<S>(dG) + st.offset * H;
      p.hprev = prev_rows<S>(hprev, y, in.h0, st, H);
      check_launch(fc::rnn_backward_launch<S>(p, stream), "rnn_backward_kernel");
      Tensor dh_rows = first_rows(dh_state, st.rows);
      at::mm_out(dh_rows, dG.narrow(0, st.offset, st.rows), in.w_hh);
    }
  }
  input_side_grads(in, g, dG, {{0, 0, H}}, out);
  bias_grads(dG, {{0, 0, H}}, H, out);
  if (want_whh) recurrent_weight_grad(out.grad_w_hh, dG, hprev, y, in.h0, g, in.reverse);
}

}  // namespace

PersistentTraces take_persistent_traces() {
  std::deque<TraceEntry> entries;
  PersistentTraces out;
  {
    const std::lock_guard<std::mutex> guard(trace_lock());
    entries.swap(trace_entries());
    std::swap(out.dropped, traces_dropped());
  }
  std::vector<at::Device> devices;
  for (const TraceEntry& e : entries)
    if (std::find(devices.begin(), devices.end(), e.values.device()) == devices.end())
      devices.push_back(e.values.device());
  try {
    for (const at::Device& d : devices) {
      const c10::cuda::CUDAGuard guard(d);
      check_launch(fc::device_synchronize(), "persistent kernels (their step traces)");
    }
  } catch (...) {
    const std::lock_guard<std::mutex> guard(trace_lock());
    auto& kept = trace_entries();
    kept.insert(kept.begin(), std::make_move_iterator(entries.begin()),
                std::make_move_iterator(entries.end()));
    traces_dropped() += out.dropped;
    throw;
  }
  out.records.reserve(entries.size());
  for (TraceEntry& e : entries) {
    const Tensor host = e.values.cpu();
    const int64_t* v = host.data_ptr<int64_t>();
    e.record.values.assign(v, v + host.numel());
    out.records.push_back(std::move(e.record));
  }
  return out;
}

void grid_barrier_probe(int64_t blocks, int64_t steps) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  int max_blocks = 0;
  check_launch(fc::grid_barrier_probe_max_blocks(max_blocks), "grid_barrier_probe");
  TORCH_CHECK(blocks >= 1 && blocks <= max_blocks,
              "fusedrnn: grid_barrier_probe: blocks must be between 1 and ", max_blocks,
              " on this device, got ", blocks);
  TORCH_CHECK(steps >= 0, "fusedrnn: grid_barrier_probe: steps must be >= 0, got ", steps);
  check_launch(fc::grid_barrier_probe_launch(static_cast<int>(blocks), steps, stream),
               "grid_barrier_probe_kernel");
}

void cuda_layer_forward(const LayerInputs& in, const LayerGeometry& g, bool training,
                        ForwardResult& out) {
  const c10::cuda::CUDAGuard guard(in.input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_dtype(in.input.scalar_type(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    switch (in.cell.kind) {
      case CellKind::kLstm: return lstm_forward_cuda<S>(in, g, training, out, stream);
      case CellKind::kGru: return gru_forward_cuda<S>(in, g, training, out, stream);
      case CellKind::kRnnTanh:
      case CellKind::kRnnRelu: return rnn_forward_cuda<S>(in, g, training, out, stream);
    }
  });
}

void cuda_layer_backward(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                         GradResult& out) {
  const c10::cuda::CUDAGuard guard(in.input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_dtype(in.input.scalar_type(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    switch (in.cell.kind) {
      case CellKind::kLstm: return lstm_backward_cuda<S>(in, g, gi, out, stream);
      case CellKind::kGru: return gru_backward_cuda<S>(in, g, gi, out, stream);
      case CellKind::kRnnTanh:
      case CellKind::kRnnRelu: return rnn_backward_cuda<S>(in, g, gi, out, stream);
    }
  });
}

}  // namespace fusedrnn
