// CPU implementation of the layer operators: fills the kernels' argument
// structs, sizes and allocates their scratch, and runs them on ATen's threads.
// float16 and bfloat16 compute in float32 (DESIGN.md, precision): inputs are
// converted on the way in and results on the way out. Where the CPU has AMX, a
// bfloat16 layer takes its products from AMX tiles, accumulating in float32
// (amx.h): the forward on the bfloat16 input and weights themselves, the
// backward's products through W_hh and W_ih on operands rounded to bfloat16.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "../kernels/cpu/amx.h"
#include "../kernels/cpu/cpu_vendor.h"
#include "cpu_memory.h"
#include "rnn_layer.h"

namespace fusedrnn {
namespace {

void run_parallel(int64_t n, int64_t grain, const void* ctx, cpu::Parallel::Body body) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { body(ctx, b, e); });
}

cpu::Parallel cpu_parallel() { return cpu::Parallel{&run_parallel, at::get_num_threads()}; }

template <typename S>
const S* ptr(const OptTensor& t) {
  return t.has_value() && t->numel() > 0 ? t->data_ptr<S>() : nullptr;
}
template <typename S>
const S* ptr(const Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<S>() : nullptr;
}
template <typename S>
S* mut(const Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<S>() : nullptr;
}

enum class Switch { kAuto, kAlways, kNever };

// An auto|always|never switch from the environment (unset or empty: auto).
Switch env_switch(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0' || std::strcmp(v, "auto") == 0) return Switch::kAuto;
  if (std::strcmp(v, "always") == 0) return Switch::kAlways;
  if (std::strcmp(v, "never") == 0) return Switch::kNever;
  TORCH_CHECK(false, name, " must be auto, always or never, got '", v, "'");
}

// A kernel policy (kAuto, kAlways, kNever) from the environment variable `name`.
template <typename Policy>
Policy env_policy(const char* name) {
  switch (env_switch(name)) {
    case Switch::kAlways: return Policy::kAlways;
    case Switch::kNever: return Policy::kNever;
    default: return Policy::kAuto;
  }
}

// FUSEDRNN_CPU_PACK=always|never forces one GEMM path (for tests and benchmarks);
// unset or auto lets the kernels decide by reuse.
cpu::PackPolicy pack_policy() {
  return env_policy<cpu::PackPolicy>("FUSEDRNN_CPU_PACK");
}

// FUSEDRNN_CPU_OVERLAP=always|never: a backward's products beside its BPTT
// wherever they can run so, or never (tests, benchmarks); unset or auto where
// the BPTT runs on one thread anyway (cpu::OverlapPolicy).
cpu::OverlapPolicy overlap_policy() {
  return env_policy<cpu::OverlapPolicy>("FUSEDRNN_CPU_OVERLAP");
}

bool cpu_is_intel() { return cpu::cpu_vendor_is("GenuineIntel"); }

// FUSEDRNN_CPU_K_CHUNKS=always|never: each step's recurrent product in chunks
// of K that stay in L1, or all of K at once (tests, benchmarks); unset or auto
// by the size of L1 (cpu::KChunkPolicy).
cpu::KChunkPolicy k_chunk_policy() {
  return env_policy<cpu::KChunkPolicy>("FUSEDRNN_CPU_K_CHUNKS");
}

// When a single step takes its products from torch's BLAS (the kernels decide
// by shape under kAuto, see kBlasMinRows). Only MKL on an Intel CPU is known to
// beat the kernels' own GEMMs there: on AMD (Zen 5) MKL takes its AVX2 path, at
// about half the speed of the kernels' AVX-512 micro-kernel (ARCHITECTURE.md).
// FUSEDRNN_CPU_BLAS=always|never forces either (tests, benchmarks).
cpu::BlasPolicy blas_policy() {
  static const bool fast = at::hasMKL() && cpu_is_intel();
  const auto policy = env_policy<cpu::BlasPolicy>("FUSEDRNN_CPU_BLAS");
  return policy == cpu::BlasPolicy::kAuto && !fast ? cpu::BlasPolicy::kNever : policy;
}

// Whether bfloat16 layers run their products in bfloat16 (amx.h: on AMX tiles,
// or with AVX512-BF16 dot products where the CPU has no tiles): where the CPU
// and the OS allow it and the kernels run with AVX-512 (auto), or as
// FUSEDRNN_CPU_AMX=always|never says (tests, benchmarks).
// FUSEDRNN_CPU_AMX_TILES=never takes the dot products where there are tiles
// (always: the tiles or an error).
cpu::amx::Engine best_engine() {
  static const cpu::amx::Engine best = std::strcmp(cpu::active_isa(), "AVX512") == 0
                                           ? cpu::amx::best()
                                           : cpu::amx::Engine::kNone;
  return best;
}

// Unless `strict`, a switch set to always that the machine cannot honour
// reports the engine auto would take instead of raising.
cpu::amx::Engine bf16_engine(bool strict = true) {
  using cpu::amx::Engine;
  const Engine best = best_engine();
  switch (env_switch("FUSEDRNN_CPU_AMX")) {
    case Switch::kNever: return Engine::kNone;
    case Switch::kAlways:
      TORCH_CHECK(!strict || best != Engine::kNone, "FUSEDRNN_CPU_AMX=always, but this CPU, its "
                  "OS or the kernels' instruction set (", cpu::active_isa(), ") cannot run "
                  "bfloat16 products (AMX tiles or AVX512-BF16)");
      break;
    default: break;
  }
  const Switch tiles = env_switch("FUSEDRNN_CPU_AMX_TILES");
  TORCH_CHECK(!strict || tiles != Switch::kAlways || best == Engine::kTiles,
              "FUSEDRNN_CPU_AMX_TILES=always, but this CPU, its OS or the kernels' instruction set (",
              cpu::active_isa(), ") cannot run AMX tiles");
  if (best == Engine::kNone) return best;
  return tiles == Switch::kNever ? Engine::kDot : best;
}

// For a bfloat16 call: whether its products run in bfloat16, on the engine
// this sets.
bool use_amx(const LayerInputs& in) {
  if (in.input.scalar_type() != at::kBFloat16) return false;
  const cpu::amx::Engine e = bf16_engine();
  if (e == cpu::amx::Engine::kNone) return false;
  cpu::amx::use(e);
  return true;
}

// cpu::BlasGemm through ATen (at::mm_out / at::addmm_out on views of the
// kernels' buffers).
template <typename S>
void aten_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const S* a, int64_t lda,
               const S* b, int64_t ldb, S* c, int64_t ldc, bool accumulate, const S* bias) {
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value);
  // op(X) of `rows` x `cols`, X row-major with leading dimension ld.
  const auto view = [&](const S* p, bool t, int64_t rows, int64_t cols, int64_t ld) {
    S* q = const_cast<S*>(p);
    return t ? at::from_blob(q, {cols, rows}, {ld, 1}, opt).t()
             : at::from_blob(q, {rows, cols}, {ld, 1}, opt);
  };
  const Tensor A = view(a, ta, M, K, lda);
  const Tensor B = view(b, tb, K, N, ldb);
  Tensor C = at::from_blob(c, {M, N}, {ldc, 1}, opt);
  if (accumulate)
    C.addmm_(A, B);
  else if (bias != nullptr)
    at::addmm_out(C, at::from_blob(const_cast<S*>(bias), {N}, opt), A, B);
  else
    at::mm_out(C, A, B);
}

// The kernels' scratch, kept per thread between calls. Allocated afresh on every
// call, the several MB of a training step came back from the system each time
// (glibc returns large freed blocks to it): about 800 page faults of about 1.4 us
// per LSTM T=100 N=16 C=H=256 training step on 2 cores (Intel Xeon), where
// torch.nn's oneDNN path, which keeps a scratchpad per thread, has none. Blocks up
// to kMaxCachedScratch are kept; larger ones (in huge pages, see aligned_block)
// and a call made while the thread's block is in use get their own. The bound
// holds the backward of a cell with wide weights, which packs both of them:
// bfloat16 LSTMCell(2048) packs 67 MB, which under a bound of 64 MiB came back
// zeroed on every call (N=64, 1 thread, Intel Xeon: 74.7 ms a backward call,
// 68.0 with the block kept), and float32 LSTMCell(2048) at N=128 more than 128
// MiB (147-149 ms a backward call kept, 157-159 under a bound of 128 MiB). So
// each thread that calls the operators keeps up to 256 MiB.
constexpr size_t kMaxCachedScratch = size_t{256} << 20;

struct ScratchCache {
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> block;
  size_t bytes = 0;
  bool busy = false;
};

ScratchCache& scratch_cache() {
  thread_local ScratchCache cache;
  return cache;
}

// A block of `bytes` for one call: the thread's cached block (grown to fit and
// marked busy while held), or its own where that is busy (a nested call) or
// the size is above kMaxCachedScratch.
class CachedBlock {
 public:
  CachedBlock(ScratchCache& cache, size_t bytes) {
    if (cache.busy || bytes > kMaxCachedScratch) {
      own_.reset(aligned_block(std::max<size_t>(bytes, 64)));
      base_ = own_.get();
      return;
    }
    if (cache.bytes < bytes) {
      cache.block.reset();
      cache.bytes = 0;
      cache.block.reset(aligned_block(bytes));
      cache.bytes = bytes;
    }
    cache.busy = true;
    held_ = &cache;
    base_ = cache.block.get();
  }
  CachedBlock(const CachedBlock&) = delete;
  CachedBlock& operator=(const CachedBlock&) = delete;
  ~CachedBlock() {
    if (held_) held_->busy = false;
  }
  char* get() const { return base_; }

 private:
  char* base_ = nullptr;
  ScratchCache* held_ = nullptr;
  std::unique_ptr<char, ScratchCache::Free> own_;
};

// Runs a kernel twice: once to size its scratch, once with it.
template <typename Args, typename Fn>
void with_scratch(const Args& args, const Fn& fn) {
  cpu::Arena sizing;
  fn(args, sizing);
  const CachedBlock block(scratch_cache(), sizing.used);
  cpu::Arena arena;
  arena.base = block.get();
  arena.capacity = sizing.used;
  fn(args, arena);
}

const uint16_t* bf16_bits(const Tensor& t) {
  return t.numel() > 0 ? reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()) : nullptr;
}
uint16_t* bf16_out(const Tensor& t) {
  return t.numel() > 0 ? reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()) : nullptr;
}

// Rows the kernels write or read in S, or in bfloat16 where t is (rnn_cpu.h's
// gates_bf16 and y_bf16): sets the one of f and b that t's dtype names.
template <typename S>
void rows_of(const Tensor& t, S*& f, uint16_t*& b) {
  if (t.scalar_type() == at::kBFloat16) b = bf16_out(t);
  else f = mut<S>(t);
}
template <typename S>
void rows_of(const Tensor& t, const S*& f, const uint16_t*& b) {
  if (t.scalar_type() == at::kBFloat16) b = bf16_bits(t);
  else f = ptr<S>(t);
}

// What a forward and a backward read alike: the cell, the GEMM policies, the
// layout and sizes, and the layer's inputs; the operands of the products, x,
// W_ih and W_hh, in S, or with `amx` the bfloat16 tensors themselves.
template <typename S, template <typename> class Args>
void set_layer_args(Args<S>& a, const LayerInputs& in, const LayerGeometry& g, bool amx) {
  a.cell = in.cell;
  a.pack = pack_policy();
  a.blas_policy = amx ? cpu::BlasPolicy::kNever : blas_policy();
  a.blas = &aten_gemm<S>;
  a.seq = g.layout(in.reverse);
  a.C = g.C;
  a.H = g.H;
  a.P = g.P;
  if (amx) {
    a.x_bf16 = bf16_bits(in.input);
    a.w_ih_bf16 = bf16_bits(in.w_ih);
    a.w_hh_bf16 = bf16_bits(in.w_hh);
  } else {
    a.x = ptr<S>(in.input);
    a.w_ih = ptr<S>(in.w_ih);
    a.w_hh = ptr<S>(in.w_hh);
  }
  a.h0 = ptr<S>(in.h0);
  a.c0 = ptr<S>(in.c0);
  a.b_hh = ptr<S>(in.b_hh);
  a.w_ch = ptr<S>(in.w_ch);
  a.w_hr = ptr<S>(in.w_hr);
}

// With `amx`, the products read in.input, in.w_ih and in.w_hh in bfloat16 (the
// other inputs are S). Saved gates, LSTM states and output in bfloat16 (S
// float) are written so.
template <typename S>
void forward_typed(const LayerInputs& in, const LayerGeometry& g, bool training,
                   ForwardResult& out, bool amx = false) {
  cpu::SeqForwardArgs<S> a{};
  set_layer_args(a, in, g, amx);
  a.k_chunks = k_chunk_policy();
  a.training = training;
  a.b_ih = ptr<S>(in.b_ih);
  rows_of(out.output, a.y, a.y_bf16);
  a.h_n = mut<S>(out.h_n);
  a.c_n = mut<S>(out.c_n);
  rows_of(out.saved.gates, a.gates, a.gates_bf16);
  rows_of(out.saved.states, a.states, a.states_bf16);
  TORCH_INTERNAL_ASSERT(!a.states_bf16 || in.cell.kind == CellKind::kLstm);
  a.proj_in = mut<S>(out.saved.proj_in);
  const cpu::Parallel par = cpu_parallel();
  with_scratch(a, [&](const cpu::SeqForwardArgs<S>& args, cpu::Arena& arena) {
    cpu::seq_forward<S>(args, arena, par);
  });
}

// With `amx`, the products through W_hh and W_ih and the weight gradients run
// on AMX tiles, reading in.input, in.w_ih and in.w_hh in bfloat16; given, the
// bfloat16 weight gradients of dw16 receive them (those of `out` are empty).
// Saved gates and LSTM states in bfloat16 (S float) are read so.
template <typename S>
void backward_typed(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                    GradResult& out, bool amx = false, const GradResult* dw16 = nullptr) {
  cpu::SeqBackwardArgs<S> a{};
  set_layer_args(a, in, g, amx);
  a.overlap = overlap_policy();
  a.amx = amx;
  a.y = ptr<S>(gi.output);
  rows_of(gi.saved.gates, a.gates, a.gates_bf16);
  rows_of(gi.saved.states, a.states, a.states_bf16);
  TORCH_INTERNAL_ASSERT(!a.states_bf16 || in.cell.kind == CellKind::kLstm);
  a.proj_in = ptr<S>(gi.saved.proj_in);
  a.dy = ptr<S>(gi.grad_output);
  a.dh_n = ptr<S>(gi.grad_h_n);
  a.dc_n = ptr<S>(gi.grad_c_n);
  a.dx = mut<S>(out.grad_input);
  a.dh0 = mut<S>(out.grad_h0);
  a.dc0 = mut<S>(out.grad_c0);
  a.dw_ih = mut<S>(out.grad_w_ih);
  a.dw_hh = mut<S>(out.grad_w_hh);
  if (dw16) {
    a.dw_ih_bf16 = bf16_out(dw16->grad_w_ih);
    a.dw_hh_bf16 = bf16_out(dw16->grad_w_hh);
  }
  a.db_ih = mut<S>(out.grad_b_ih);
  a.db_hh = mut<S>(out.grad_b_hh);
  a.dw_ch = mut<S>(out.grad_w_ch);
  a.dw_hr = mut<S>(out.grad_w_hr);
  const cpu::Parallel par = cpu_parallel();
  with_scratch(a, [&](const cpu::SeqBackwardArgs<S>& args, cpu::Arena& arena) {
    cpu::seq_backward<S>(args, arena, par);
  });
}

bool is_16bit(const Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// The float32 copies of a 16-bit call (its inputs converted, its results
// before their conversion back), carved from one block kept per thread between
// calls, as the kernels' scratch is: from the allocator, the several MB of a
// training call came back from the system as page faults on every call (about
// 13% of a bfloat16 LSTMCell training step, N=16 H=256, under perf). Every
// tensor is reserve()d before the first take.
class FloatCopies {
 public:
  template <typename... T>
  void reserve(const T&... ts) {
    (add(ts), ...);
  }
  // A float32 copy of t (undefined / nullopt stay so).
  Tensor copy_of(const Tensor& t) { return t.defined() ? take(t.sizes()).copy_(t) : t; }
  OptTensor copy_of(const OptTensor& t) { return t.has_value() ? OptTensor(copy_of(*t)) : t; }
  // Uninitialised float32 of t's sizes.
  Tensor like(const Tensor& t) { return take(t.sizes()); }

 private:
  static size_t padded(int64_t numel) { return (static_cast<size_t>(numel) * 4 + 63) / 64 * 64; }
  void add(const Tensor& t) { bytes_ += t.defined() ? padded(t.numel()) : 0; }
  void add(const OptTensor& t) { bytes_ += t.has_value() ? padded(t->numel()) : 0; }

  Tensor take(at::IntArrayRef sizes) {
    if (!block_) block_.emplace(copies_cache(), bytes_);
    const int64_t n = c10::multiply_integers(sizes);
    TORCH_INTERNAL_ASSERT(used_ + padded(n) <= bytes_, "FloatCopies: take() beyond reserve()");
    char* p = block_->get() + used_;
    used_ += padded(n);
    return at::from_blob(p, sizes, at::TensorOptions().dtype(at::kFloat));
  }
  static ScratchCache& copies_cache() {
    thread_local ScratchCache cache;
    return cache;
  }

  size_t bytes_ = 0, used_ = 0;
  std::optional<CachedBlock> block_;
};

// The inputs to float32, from `copies`. With `amx`, the operands of the
// products stay bfloat16 (made contiguous).
void reserve_inputs(FloatCopies& copies, const LayerInputs& in, bool amx) {
  copies.reserve(in.h0, in.c0, in.b_ih, in.b_hh, in.w_ch, in.w_hr);
  if (!amx) copies.reserve(in.input, in.w_ih, in.w_hh);
}
LayerInputs float_inputs(FloatCopies& copies, const LayerInputs& in, bool amx) {
  LayerInputs f = in;
  const auto product_operand = [&](const Tensor& t) {
    return amx ? t.contiguous() : copies.copy_of(t);
  };
  f.input = product_operand(in.input);
  f.h0 = copies.copy_of(in.h0);
  f.c0 = copies.copy_of(in.c0);
  f.w_ih = product_operand(in.w_ih);
  f.w_hh = product_operand(in.w_hh);
  f.b_ih = copies.copy_of(in.b_ih);
  f.b_hh = copies.copy_of(in.b_hh);
  f.w_ch = copies.copy_of(in.w_ch);
  f.w_hr = copies.copy_of(in.w_hr);
  return f;
}

// Calls fn on float copies of `results` (reserved in `copies`), then writes
// them back in place.
template <typename Fn>
void through_float(FloatCopies& copies, const std::vector<Tensor*>& results, const Fn& fn) {
  std::vector<Tensor> f;
  for (Tensor* t : results) f.push_back(copies.like(*t));
  fn(f);
  size_t i = 0;
  for (Tensor* t : results) {
    if (t->numel() > 0) t->copy_(f[i]);
    ++i;
  }
}

}  // namespace

// The directions run at once, one thread each: a direction's kernels then run
// on that thread alone (a nested parallel region is serial), where in turn each
// would share the threads step by step, with a barrier a phase.
// - A forward: on two threads always; on more where the kernels would run each
//   direction's steps on one thread anyway (the step's recurrent product below
//   cpu::kMinStepFmaForThreads multiply-adds).
// - A backward: on two threads only (on more, the directions' weight-gradient
//   products would lose the other threads); in float16 and bfloat16 only where
//   each direction's steps would run on one thread anyway
//   (cpu::bptt_on_one_thread), as with N=16-64 and H=128-256 the directions at once took
//   1.03-1.19 of the time of their turns (bfloat16, AVX512-BF16, T=50).
// Paired against the turns, 2 threads, T=100, AMD Zen 5, 2026-12-05
// (bench/results/cpu-amd-epyc-zen5-2c/directions-at-once.md).
// FUSEDRNN_CPU_DIRECTIONS_AT_ONCE=always|never forces either (tests, benchmarks).
bool cpu_directions_at_once(const LayerInputs& in, const LayerGeometry& g, bool backward) {
  const int threads = at::get_num_threads();
  if (threads < 2 || at::in_parallel_region()) return false;
  switch (env_switch("FUSEDRNN_CPU_DIRECTIONS_AT_ONCE")) {
    case Switch::kAlways: return true;
    case Switch::kNever: return false;
    default: break;
  }
  const int64_t step_fma = g.N * g.G * g.H * g.P;
  if (!backward) return threads == 2 || step_fma < cpu::kMinStepFmaForThreads;
  if (threads != 2) return false;
  return !is_16bit(in.input) || cpu::bptt_on_one_thread(g.T, g.H, step_fma);
}

const char* cpu_single_step_products() {
  switch (blas_policy()) {
    case cpu::BlasPolicy::kAlways: return "blas";
    case cpu::BlasPolicy::kAuto: return "blas by shape";
    default: return "own";
  }
}

const char* cpu_bfloat16_products() {
  switch (bf16_engine(false)) {
    case cpu::amx::Engine::kTiles: return "amx";
    case cpu::amx::Engine::kDot: return "avx512-bf16";
    default: return "float32";
  }
}

void cpu_layer_forward(const LayerInputs& in, const LayerGeometry& g, bool training,
                       ForwardResult& out) {
  if (is_16bit(in.input)) {
    const bool amx = use_amx(in);
    // The kernels write a bfloat16 call's saved gates and LSTM states
    // themselves, and its output unless a projection's product writes it.
    const bool gates16 = out.saved.gates.scalar_type() == at::kBFloat16;
    const bool states16 = gates16 && in.cell.kind == CellKind::kLstm;
    const bool y16 = out.output.scalar_type() == at::kBFloat16 && !in.w_hr.has_value();
    std::vector<Tensor*> results{&out.h_n, &out.c_n, &out.saved.proj_in};
    if (!y16) results.push_back(&out.output);
    if (!gates16) results.push_back(&out.saved.gates);
    if (!states16) results.push_back(&out.saved.states);
    FloatCopies copies;
    reserve_inputs(copies, in, amx);
    for (const Tensor* t : results) copies.reserve(*t);
    const LayerInputs f = float_inputs(copies, in, amx);
    through_float(copies, results, [&](std::vector<Tensor>& t) {
      size_t next = 3;
      const Tensor& y = y16 ? out.output : t[next++];
      const Tensor& gates = gates16 ? out.saved.gates : t[next++];
      const Tensor& states = states16 ? out.saved.states : t[next++];
      ForwardResult fo{y, t[0], t[1], Saved{gates, states, t[2]}};
      forward_typed<float>(f, g, training, fo, amx);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(in.input.scalar_type(), "fusedrnn_cpu_forward",
                             [&] { forward_typed<scalar_t>(in, g, training, out); });
}

void cpu_layer_backward(const LayerInputs& in, const LayerGeometry& g, const GradInputs& gi,
                        GradResult& out) {
  if (is_16bit(in.input)) {
    const bool amx = use_amx(in);
    // Up to one chunk of rows, the tiles write the weight gradients in
    // bfloat16 themselves: no float32 copy to convert back.
    const bool dw16 = amx && g.R <= cpu::amx::kTnChunkK && out.grad_w_ih.is_contiguous() &&
                      out.grad_w_hh.is_contiguous();
    // The results computed in float32: all of `out`, but those.
    GradResult r = out;
    if (dw16) {
      r.grad_w_ih = at::empty({0}, out.grad_w_ih.options());
      r.grad_w_hh = r.grad_w_ih;
    }
    const bool gates16 = gi.saved.gates.scalar_type() == at::kBFloat16;
    const bool states16 = gates16 && in.cell.kind == CellKind::kLstm;
    FloatCopies copies;
    reserve_inputs(copies, in, amx);
    copies.reserve(gi.grad_output, gi.grad_h_n, gi.grad_c_n, gi.output, gi.saved.proj_in);
    if (!gates16) copies.reserve(gi.saved.gates);
    if (!states16) copies.reserve(gi.saved.states);
    copies.reserve(r.grad_input, r.grad_h0, r.grad_c0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih,
                   r.grad_b_hh, r.grad_w_ch, r.grad_w_hr);
    const LayerInputs f = float_inputs(copies, in, amx);
    GradInputs gf = gi;
    gf.grad_output = copies.copy_of(gi.grad_output);
    gf.grad_h_n = copies.copy_of(gi.grad_h_n);
    gf.grad_c_n = copies.copy_of(gi.grad_c_n);
    gf.output = copies.copy_of(gi.output);
    if (!gates16) gf.saved.gates = copies.copy_of(gi.saved.gates);
    if (!states16) gf.saved.states = copies.copy_of(gi.saved.states);
    gf.saved.proj_in = copies.copy_of(gi.saved.proj_in);
    through_float(copies,
                  {&r.grad_input, &r.grad_h0, &r.grad_c0, &r.grad_w_ih, &r.grad_w_hh,
                   &r.grad_b_ih, &r.grad_b_hh, &r.grad_w_ch, &r.grad_w_hr},
                  [&](std::vector<Tensor>& t) {
                    GradResult go{t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]};
                    backward_typed<float>(f, g, gf, go, amx, dw16 ? &out : nullptr);
                  });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(in.input.scalar_type(), "fusedrnn_cpu_backward",
                             [&] { backward_typed<scalar_t>(in, g, gi, out); });
}

}  // namespace fusedrnn
