// Shared definitions for the torch-free kernels (host C++ and CUDA).
//
// Legend used in every header: T steps, N batch, C input size, H hidden size,
// P projection size (P = H without projection), G gate blocks, R rows of a
// time-major sequence (R = T*N padded, R = sum(batch_sizes) packed).
#pragma once

#include <cstdint>

// Inlined everywhere, as the CPU loops need the cell math in registers: the
// compiler's own budget leaves it out of line in the larger loops.
#if defined(__CUDACC__)
#define FRNN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FRNN_HD inline __attribute__((always_inline))
#else
#define FRNN_HD inline
#endif

namespace fusedrnn {

// The cell families. The numeric values are part of no interface.
enum class CellKind : int {
  kRnnTanh = 0,
  kRnnRelu = 1,
  kLstm = 2,
  kGru = 3,
};

// Accumulation type: float for float and the 16-bit types, double for double.
// Specialised for the 16-bit host/device types where those types are known.
template <typename T>
struct AccType {
  using type = T;
};
template <typename T>
using acc_t = typename AccType<T>::type;

template <typename I>
constexpr FRNN_HD I ceil_div(I a, I b) {
  return (a + b - 1) / b;
}

template <typename I>
constexpr FRNN_HD I round_up(I a, I b) {
  return ceil_div(a, b) * b;
}

// Number of gate blocks for a cell: rows of w_ih and w_hh are G*H.
constexpr FRNN_HD int num_gates(CellKind kind, bool coupled) {
  return kind == CellKind::kLstm ? (coupled ? 3 : 4) : kind == CellKind::kGru ? 3 : 1;
}

// Per-row bookkeeping of a (possibly packed) time-major sequence.
//   batch_sizes[t]: active rows at step t, non-increasing in t (all N when padded).
//   offsets[t]: first row of step t in the [R, .] arrays; offsets[T] = R.
// A direction processes t = 0..T-1 (forward) or T-1..0 (reverse). At each step
// the active rows 0..b-1 read their previous state from the step processed just
// before (rows below `split`) or from the initial state (the rest): in reverse
// direction a row's first processed step is its last time step.
struct StepInfo {
  int64_t t;       // time index
  int64_t rows;    // active rows
  int64_t offset;  // first row in the [R, .] arrays
  int64_t prev_offset;  // first row of the previously processed step, or -1
  int64_t split;   // rows below come from the previous step, the rest from h0/c0
};

struct SeqLayout {
  int64_t T;
  int64_t N;
  // Per-step active rows [T] and first rows [T + 1] of a packed sequence;
  // both null for a padded one (N rows at every step), which then needs no
  // per-step arrays however long it is.
  const int64_t* batch_sizes;
  const int64_t* offsets;
  bool reverse;

  FRNN_HD int64_t rows(int64_t t) const { return batch_sizes ? batch_sizes[t] : N; }
  FRNN_HD int64_t offset(int64_t t) const { return offsets ? offsets[t] : t * N; }

  // The s-th processed step, s = 0..T-1.
  FRNN_HD StepInfo step(int64_t s) const {
    StepInfo st;
    st.t = reverse ? T - 1 - s : s;
    st.rows = rows(st.t);
    st.offset = offset(st.t);
    if (s == 0) {
      st.prev_offset = -1;
      st.split = 0;
    } else {
      const int64_t tp = reverse ? st.t + 1 : st.t - 1;
      st.prev_offset = offset(tp);
      st.split = reverse ? rows(tp) : st.rows;
    }
    return st;
  }
};

// Steps [s0, s1) of the processing order cover rows [row0, row0 + rows): one
// contiguous range in either direction.
struct Chunk {
  int64_t s0, s1, row0, rows;
};

// The longest run of steps from s0 whose rows fit in max_rows (at least one step).
inline Chunk next_chunk(const SeqLayout& seq, int64_t s0, int64_t max_rows) {
  int64_t s1 = s0, rows = 0;
  while (s1 < seq.T) {
    const int64_t t = seq.reverse ? seq.T - 1 - s1 : s1;
    if (rows > 0 && rows + seq.rows(t) > max_rows) break;
    rows += seq.rows(t);
    ++s1;
  }
  const int64_t row0 = seq.reverse ? seq.offset(seq.T - s1) : seq.offset(s0);
  return Chunk{s0, s1, row0, rows};
}

}  // namespace fusedrnn
