// The bfloat16 products of amx.h, on AMX tiles or with AVX512-BF16 dot
// products. The build compiles this file alone with -mamx-tile -mamx-bf16
// -mavx512bf16 (and the AVX-512 flags); a build without them gets
// best() == Engine::kNone.
#include "amx.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>

#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && \
    defined(__AVX512BF16__) && defined(__linux__)
#define FUSEDRNN_AMX_COMPILED 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cpu_vendor.h"
#include "hsum512.h"
#endif

namespace fusedrnn::cpu::amx {

#ifdef FUSEDRNN_AMX_COMPILED

namespace {

constexpr int kXfeatureTileData = 18;
constexpr unsigned long kArchReqXcompPerm = 0x1023;

// The best engine the CPU and the OS allow: AVX512-BF16 dot products need
// AVX-512 F, BW, VL and BF16 with the ZMM state enabled; the tiles need AMX-BF16
// and AMX-TILE besides, and the tile state granted.
Engine cpu_and_os_allow() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Engine::kNone;
  const bool avx512 = (b >> 16 & 1) && (b >> 30 & 1) && (b >> 31 & 1);  // F, BW, VL
  const bool amx = (d >> 22 & 1) && (d >> 24 & 1);                      // AMX-BF16, AMX-TILE
  if (!avx512) return Engine::kNone;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a >> 5 & 1)) return Engine::kNone;  // AVX512_BF16
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1)) return Engine::kNone;          // OSXSAVE
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  // XCR0: SSE and AVX state (1, 2), opmask and ZMM halves (5-7), then the tile
  // configuration and data (17, 18).
  if ((lo & 0xE6u) != 0xE6u) return Engine::kNone;
  if (!amx || (lo & 0x60000u) != 0x60000u) return Engine::kDot;
  // Linux hands out the tile data state only on request, once per process.
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) == 0 ? Engine::kTiles
                                                                            : Engine::kDot;
}

std::atomic<Engine> g_engine{Engine::kNone};
// The engine of this thread's products from its begin() to its end(), read once
// there: a use() by another thread in between does not reach a product whose
// tile configuration begin() did (or did not) load.
thread_local Engine t_engine = Engine::kNone;

bool on_tiles() { return t_engine == Engine::kTiles; }

// Tiles: 0 and 3 A (16 x 64 bytes), 1 and 2 B, 4..7 results (16 x 16 float32).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

const TileConfig& config() {
  static const TileConfig cfg = [] {
    TileConfig c;
    for (int t : {0, 1, 2, 3, 4, 5, 6, 7}) {
      c.colsb[t] = 64;
      c.rows[t] = 16;
    }
    return c;
  }();
  return cfg;
}

struct FreeAligned {
  void operator()(bf16* p) const { std::free(p); }
};

__m256bh to_bf16(__m512 v) { return _mm512_cvtneps_pbh(v); }

// r[c] = column c of the 16 x 16 block whose row i was r[i]. The unpacks in
// their zero-masking form over every lane: the same instructions, without the
// plain forms' undefined pass-through operand, through which GCC 12's headers
// warn (-Wuninitialized) at -O1.
inline void transpose16(__m512 r[16]) {
  constexpr __mmask16 kAll = 0xFFFF;
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_ps(kAll, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_ps(kAll, r[2 * i], r[2 * i + 1]);
  }
  // q[4i + c], 128-bit lane L: rows 4i..4i+3 of column 4L + c.
  __m512 q[16];
  for (int i = 0; i < 4; ++i) {
    q[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    q[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    q[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    q[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 lo01 = _mm512_shuffle_f32x4(q[c], q[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 lo23 = _mm512_shuffle_f32x4(q[8 + c], q[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 hi01 = _mm512_shuffle_f32x4(q[c], q[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 hi23 = _mm512_shuffle_f32x4(q[8 + c], q[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
    r[c] = _mm512_shuffle_f32x4(lo01, lo23, _MM_SHUFFLE(2, 0, 2, 0));
    r[4 + c] = _mm512_shuffle_f32x4(lo01, lo23, _MM_SHUFFLE(3, 1, 3, 1));
    r[8 + c] = _mm512_shuffle_f32x4(hi01, hi23, _MM_SHUFFLE(2, 0, 2, 0));
    r[12 + c] = _mm512_shuffle_f32x4(hi01, hi23, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// The items of w due after K block k of kb: the share of blocks 0..k of what
// was left at the product's start.
inline void run_due(Interleave* w, int64_t start, int64_t k, int64_t kb) {
  const int64_t due = start + (w->end - start) * (k + 1) / kb;
  for (; w->next < due; ++w->next) w->fn(w->ctx, w->next);
}

template <int NT>
inline void product_n(const bf16* a, int64_t kb, const bf16* const* b, float* out,
                      Interleave* w) {
  const int64_t start = w ? w->next : 0;
  const int64_t lda = kb * kTileK * static_cast<int64_t>(sizeof(bf16));
  _tile_zero(4);
  if constexpr (NT > 1) _tile_zero(5);
  if constexpr (NT > 2) _tile_zero(6);
  if constexpr (NT > 3) _tile_zero(7);
  for (int64_t k = 0; k < kb; ++k) {
    _tile_loadd(0, a + k * kTileK, lda);
    _tile_loadd(1, b[0] + k * kTileElems, 64);
    _tile_dpbf16ps(4, 0, 1);
    if constexpr (NT > 1) {
      _tile_loadd(2, b[1] + k * kTileElems, 64);
      _tile_dpbf16ps(5, 0, 2);
    }
    if constexpr (NT > 2) {
      _tile_loadd(1, b[2] + k * kTileElems, 64);
      _tile_dpbf16ps(6, 0, 1);
    }
    if constexpr (NT > 3) {
      _tile_loadd(2, b[3] + k * kTileElems, 64);
      _tile_dpbf16ps(7, 0, 2);
    }
    if (w) run_due(w, start, k, kb);
  }
  _tile_stored(4, out, 64);
  if constexpr (NT > 1) _tile_stored(5, out + 256, 64);
  if constexpr (NT > 2) _tile_stored(6, out + 512, 64);
  if constexpr (NT > 3) _tile_stored(7, out + 768, 64);
}

template <int NT>
inline void product2_n(const bf16* a0, const bf16* a1, int64_t kb, const bf16* const* b,
                       float* out0, float* out1, Interleave* w) {
  const int64_t start = w ? w->next : 0;
  const int64_t lda = kb * kTileK * static_cast<int64_t>(sizeof(bf16));
  _tile_zero(4);
  _tile_zero(6);
  if constexpr (NT > 1) {
    _tile_zero(5);
    _tile_zero(7);
  }
  for (int64_t k = 0; k < kb; ++k) {
    _tile_loadd(0, a0 + k * kTileK, lda);
    _tile_loadd(3, a1 + k * kTileK, lda);
    _tile_loadd(1, b[0] + k * kTileElems, 64);
    _tile_dpbf16ps(4, 0, 1);
    _tile_dpbf16ps(6, 3, 1);
    if constexpr (NT > 1) {
      _tile_loadd(2, b[1] + k * kTileElems, 64);
      _tile_dpbf16ps(5, 0, 2);
      _tile_dpbf16ps(7, 3, 2);
    }
    if (w) run_due(w, start, k, kb);
  }
  _tile_stored(4, out0, 64);
  _tile_stored(6, out1, 64);
  if constexpr (NT > 1) {
    _tile_stored(5, out0 + 256, 64);
    _tile_stored(7, out1 + 256, 64);
  }
}

// The dot engine: the same products with vdpbf16ps, 16 k-pairs of a packed
// block one after the other. A vector of tile t's block at pair p holds the
// pair (2p, 2p+1) of its 16 columns, the VNNI layout the instruction takes;
// each row of A broadcasts its pair. Rows [r0, r0 + RB) of out[t], t < NT: RB
// x NT accumulators and NT vectors of B in registers (at most 30 of 32). The
// last block multiplies its first `last` pairs (kPartial), those that hold K
// (the rest are zero in A and B): a weight gradient over one row of a cell
// call takes one pair of its block of 16. Whole blocks keep a loop of 16
// (with the bound in a register, LSTM T=100 N=64 H=256 took 1.4% longer).
template <int NT, int RB, bool kPartial>
inline void dot_rows(const bf16* a, int64_t lda, int64_t kb, int last, const bf16* const* b,
                     float* out, int r0) {
  static_assert(RB * NT + NT <= 30, "accumulators and B vectors fit the 32 registers");
  __m512 acc[RB][NT];
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kb; ++k) {
    const bf16* ak = a + r0 * lda + k * kTileK;
    const int np = kPartial && k + 1 == kb ? last : kTileK / 2;
    for (int p = 0; p < np; ++p) {
      __m512bh bv[NT];
      for (int t = 0; t < NT; ++t)
        bv[t] = reinterpret_cast<__m512bh>(
            _mm512_loadu_si512(b[t] + k * kTileElems + p * 2 * kTileCols));
      for (int r = 0; r < RB; ++r) {
        int32_t pair;
        std::memcpy(&pair, ak + r * lda + 2 * p, sizeof(pair));
        const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
        for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], av, bv[t]);
      }
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int t = 0; t < NT; ++t)
      _mm512_storeu_ps(out + t * kTileRows * kTileCols + (r0 + r) * kTileCols, acc[r][t]);
}

// dot_rows<NT, n> for a run-time n in [R, RMAX].
template <int NT, int R, int RMAX>
inline void dot_rows_n(int n, const bf16* a, int64_t lda, int64_t kb, int last,
                       const bf16* const* b, float* out, int r0) {
  if constexpr (R < RMAX) {
    if (n != R) return dot_rows_n<NT, R + 1, RMAX>(n, a, lda, kb, last, b, out, r0);
  }
  if (last == kTileK / 2)
    dot_rows<NT, R, false>(a, lda, kb, last, b, out, r0);
  else
    dot_rows<NT, R, true>(a, lda, kb, last, b, out, r0);
}

// Rows [0, rows) of the block, so that a partial block (a step of a few rows)
// multiplies only its own: in as few runs of at most RB rows (6 with 4 tiles,
// 8 with 2 or 3, 16 with one) as there can be, of even sizes (8 rows with 4
// tiles: 4 + 4, 16 accumulators each, where 6 + 2 left the second run 8, too
// few chains to cover the instruction's latency).
template <int NT>
inline void product_dot(const bf16* a, int64_t K, const bf16* const* b, float* out,
                        Interleave* w, int rows) {
  constexpr int RB = NT == 4 ? 6 : NT >= 2 ? 8 : 16;
  const int64_t kb = k_blocks(K), lda = kb * kTileK;
  const int last = static_cast<int>(K - (kb - 1) * kTileK + 1) / 2;
  const int runs = (rows + RB - 1) / RB;
  for (int k = 0, r = 0; k < runs; ++k) {
    const int n = rows / runs + (k < rows % runs ? 1 : 0);
    dot_rows_n<NT, 1, RB>(n, a, lda, kb, last, b, out, r);
    r += n;
  }
  if (w)
    for (; w->next < w->end; ++w->next) w->fn(w->ctx, w->next);
}

}  // namespace

Engine best() {
  static const Engine e = cpu_and_os_allow();
  return e;
}

void use(Engine e) {
  if (e != Engine::kNone && static_cast<int>(e) > static_cast<int>(best())) std::abort();
  g_engine.store(e, std::memory_order_relaxed);
}

Engine in_use() { return g_engine.load(std::memory_order_relaxed); }

bool dot_half_rate() {
  static const bool half = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!cpu_vendor_is("AuthenticAMD") || !__get_cpuid(1, &a, &b, &c, &d)) return false;
    const unsigned base = a >> 8 & 0xf, family = base == 0xf ? base + (a >> 20 & 0xff) : base;
    return family == 0x19 && best() != Engine::kNone;
  }();
  return half;
}

// A block of a tile is the 16 x 16 transpose of 32-bit words (k-pairs): row c
// of W's 16 rows, words 0..15 of the block, becomes column c.
void pack(const bf16* w, int64_t rows, int64_t K, int64_t ldw, bf16* dst, int64_t stride,
          int64_t j0, int64_t j1) {
  const int64_t kb = k_blocks(K);
  for (int64_t j = j0; j < j1; ++j) {
    bf16* t = dst + j * stride;
    const int64_t r0 = j * kTileCols;
    const int64_t nr = std::max<int64_t>(0, std::min<int64_t>(kTileCols, rows - r0));
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t k0 = b * kTileK, n = std::min<int64_t>(kTileK, K - k0);
      const __mmask32 m = n >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << n) - 1u);
      __m512 r[16];
      for (int c = 0; c < 16; ++c)
        r[c] = c < nr ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, w + (r0 + c) * ldw + k0))
                      : _mm512_setzero_ps();
      transpose16(r);
      for (int p = 0; p < 16; ++p) _mm512_storeu_ps(t + b * kTileElems + p * 2 * kTileCols, r[p]);
    }
  }
}

namespace {

// A buffer of at least `need` bfloat16 on this thread, kept between calls,
// one for each kSlot.
template <int kSlot>
bf16* thread_buffer(int64_t need) {
  thread_local std::unique_ptr<bf16, FreeAligned> buf;
  thread_local int64_t size = 0;
  if (need > size) {
    buf.reset(static_cast<bf16*>(std::aligned_alloc(64, need * sizeof(bf16))));
    if (!buf) std::abort();
    size = need;
  }
  return buf.get();
}

}  // namespace

bf16* staging(int64_t K, int64_t blocks) { return thread_buffer<0>(block_size(K) * blocks); }

void stage(const float* src, int64_t ld, int64_t rows, int64_t K, bf16* dst, int64_t ldd) {
  const int64_t width = k_blocks(K) * kTileK;
  for (int64_t r = 0; r < kTileRows; ++r) {
    bf16* d = dst + r * (ldd > 0 ? ldd : width);
    if (r >= rows) {
      std::memset(d, 0, width * sizeof(bf16));
      continue;
    }
    const float* s = src + r * ld;
    for (int64_t k = 0; k < width; k += 16) {
      const int64_t n = std::max<int64_t>(0, std::min<int64_t>(16, K - k));
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(m, s + k);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k), reinterpret_cast<__m256i>(to_bf16(v)));
    }
  }
}

void stage(const bf16* src, int64_t ld, int64_t rows, int64_t K, bf16* dst, int64_t ldd) {
  const int64_t width = k_blocks(K) * kTileK;
  for (int64_t r = 0; r < kTileRows; ++r) {
    bf16* d = dst + r * (ldd > 0 ? ldd : width);
    if (r < rows) {
      std::memcpy(d, src + r * ld, K * sizeof(bf16));
      std::memset(d + K, 0, (width - K) * sizeof(bf16));
    } else {
      std::memset(d, 0, width * sizeof(bf16));
    }
  }
}

void begin() {
  t_engine = g_engine.load(std::memory_order_relaxed);
  if (on_tiles()) _tile_loadconfig(&config());
}
void end() {
  if (on_tiles()) _tile_release();
  t_engine = Engine::kNone;
}

void product2(const bf16* a0, const bf16* a1, int64_t K, const bf16* const* b, int nt,
              float* out0, float* out1, Interleave* work, int rows1) {
  if (!on_tiles()) {
    product(a0, K, b, nt, out0, nullptr);
    return product(a1, K, b, nt, out1, work, rows1);
  }
  const int64_t kb = k_blocks(K);
  if (nt > 1)
    product2_n<2>(a0, a1, kb, b, out0, out1, work);
  else
    product2_n<1>(a0, a1, kb, b, out0, out1, work);
}

void product(const bf16* a, int64_t K, const bf16* const* b, int nt, float* out,
             Interleave* work, int rows) {
  const int64_t kb = k_blocks(K);
  if (!on_tiles()) {
    switch (nt) {
      case 1: return product_dot<1>(a, K, b, out, work, rows);
      case 2: return product_dot<2>(a, K, b, out, work, rows);
      case 3: return product_dot<3>(a, K, b, out, work, rows);
      default: return product_dot<4>(a, K, b, out, work, rows);
    }
  }
  switch (nt) {
    case 1: return product_n<1>(a, kb, b, out, work);
    case 2: return product_n<2>(a, kb, b, out, work);
    case 3: return product_n<3>(a, kb, b, out, work);
    default: return product_n<4>(a, kb, b, out, work);
  }
}

namespace {

// Rows [0, MR) of C (row stride ldc) = rows [0, MR) of A times rows [0, nw) of
// W, transposed, + bias: MR * NW = 16 accumulators, accumulator i * NW + j over
// the k-pairs of row i of A against row j of W (vdpbf16ps on 32 k at a time
// from both rows), then one transposing reduction, whose lane i * NW + j is
// C[i, j]. Rows of W past nw re-read row nw - 1; their sums are not stored.
// The masked tail of K (zeros in both) starts the sums, and whole vectors
// follow in one loop: with the tail after the loop, or a scalar epilogue, GCC
// kept the accumulators in memory.
template <int MR, int NW>
inline void dot_nt_tile(int64_t K, const bf16* a, int64_t lda, const bf16* w, int64_t ldw,
                        float* c, int64_t ldc, int64_t nw, const float* bias) {
  static_assert(MR * NW == 16, "one vector of sums");
  const bf16* wr[NW];
  for (int j = 0; j < NW; ++j) wr[j] = w + std::min<int64_t>(j, nw - 1) * ldw;
  const int64_t full = K / kTileK * kTileK;
  const __mmask32 tail = full < K ? static_cast<__mmask32>((1u << (K - full)) - 1u) : 0;
  __m512 acc[16];
  {
    __m512bh av[MR];
    for (int i = 0; i < MR; ++i)
      av[i] = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, a + i * lda + full));
    for (int j = 0; j < NW; ++j) {
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, wr[j] + full));
      for (int i = 0; i < MR; ++i)
        acc[i * NW + j] = _mm512_dpbf16_ps(_mm512_setzero_ps(), av[i], wv);
    }
  }
  for (int64_t k = 0; k < full; k += kTileK) {
    __m512bh av[MR];
    for (int i = 0; i < MR; ++i)
      av[i] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(a + i * lda + k));
    for (int j = 0; j < NW; ++j) {
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wr[j] + k));
      for (int i = 0; i < MR; ++i) acc[i * NW + j] = _mm512_dpbf16_ps(acc[i * NW + j], av[i], wv);
    }
  }
  __m512 sums = hsum16(acc);
  const __mmask16 row = static_cast<__mmask16>((1u << nw) - 1u);
  if (bias) {
    alignas(64) static constexpr int kCol[16] = {
        0 % NW, 1 % NW, 2 % NW,  3 % NW,  4 % NW,  5 % NW,  6 % NW,  7 % NW,
        8 % NW, 9 % NW, 10 % NW, 11 % NW, 12 % NW, 13 % NW, 14 % NW, 15 % NW};
    sums = _mm512_add_ps(sums, _mm512_permutexvar_ps(_mm512_load_si512(kCol),
                                                     _mm512_maskz_loadu_ps(row, bias)));
  }
  // Lanes [i * NW, i * NW + nw), moved to the front, to row i.
  for (int i = 0; i < MR; ++i)
    _mm512_mask_storeu_ps(
        c + i * ldc, row,
        _mm512_maskz_compress_ps(static_cast<__mmask16>(row << (i * NW)), sums));
}

// dot_nt_tile over columns [0, n) of C, NW at a time.
template <int MR, int NW>
inline void dot_nt_rows(int64_t K, int64_t n, const bf16* a, int64_t lda, const bf16* w,
                        int64_t ldw, float* c, int64_t ldc, const float* bias) {
  for (int64_t j = 0; j < n; j += NW)
    dot_nt_tile<MR, NW>(K, a, lda, w + j * ldw, ldw, c + j, ldc, std::min<int64_t>(NW, n - j),
                        bias ? bias + j : nullptr);
}

// Per 16 columns (16 rows of W, read from L1 by every group of rows): groups
// of 4 rows against 4 rows of W (8 loads for 16 vdpbf16ps), then a pair of rows
// against 8, then a row against 16 (17 loads, the rate of a single row with
// packed W too).
void gemm_nt_dot(int64_t M, int64_t N, int64_t K, const bf16* a, int64_t lda, const bf16* w,
                 int64_t ldw, float* c, int64_t ldc, const float* bias, int64_t j0, int64_t j1) {
  for (int64_t jt = j0; jt < j1; ++jt) {
    const int64_t c0 = jt * kTileCols, n = std::min<int64_t>(kTileCols, N - c0);
    if (n <= 0) break;
    const bf16* wj = w + c0 * ldw;
    const float* bj = bias ? bias + c0 : nullptr;
    int64_t i = 0;
    for (; i + 4 <= M; i += 4)
      dot_nt_rows<4, 4>(K, n, a + i * lda, lda, wj, ldw, c + i * ldc + c0, ldc, bj);
    if (i + 2 <= M) {
      dot_nt_rows<2, 8>(K, n, a + i * lda, lda, wj, ldw, c + i * ldc + c0, ldc, bj);
      i += 2;
    }
    if (i < M) dot_nt_rows<1, 16>(K, n, a + i * lda, lda, wj, ldw, c + i * ldc + c0, ldc, bj);
  }
}

// The A operand: 16 rows of W from w (the first n of them W's) and K block k,
// loaded in place where the block holds 16 rows and 32 columns of W, else from
// a copy in `pad` (zero past K and past the n rows), so that no load reads past
// W's rows.
inline void load_w_tile(int tile_a, const bf16* w, int64_t ldw, int64_t K, int64_t n, int64_t k,
                        bf16* pad) {
  const int64_t k0 = k * kTileK;
  if (n == kTileRows && k0 + kTileK <= K) {
    if (tile_a == 0) _tile_loadd(0, w + k0, ldw * static_cast<int64_t>(sizeof(bf16)));
    else _tile_loadd(3, w + k0, ldw * static_cast<int64_t>(sizeof(bf16)));
    return;
  }
  const int64_t kk = std::min<int64_t>(kTileK, K - k0);
  const __mmask32 m = kk >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << kk) - 1u);
  for (int r = 0; r < kTileRows; ++r)
    _mm512_storeu_si512(pad + r * kTileK,
                        r < n ? _mm512_maskz_loadu_epi16(m, w + r * ldw + k0)
                              : _mm512_setzero_si512());
  if (tile_a == 0) _tile_loadd(0, pad, kTileK * static_cast<int64_t>(sizeof(bf16)));
  else _tile_loadd(3, pad, kTileK * static_cast<int64_t>(sizeof(bf16)));
}

// The first n columns of `rows` rows of C from the 16 x 16 result tile `res`
// (16 rows of W by 16 rows of A): transposed, + bias.
inline void store_t(const float* res, float* c, int64_t ldc, int64_t rows, int64_t n,
                    const float* bias) {
  __m512 r[16];
  for (int u = 0; u < 16; ++u) r[u] = _mm512_load_ps(res + u * kTileCols);
  transpose16(r);
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(m, bias) : _mm512_setzero_ps();
  for (int64_t i = 0; i < rows; ++i) _mm512_mask_storeu_ps(c + i * ldc, m, _mm512_add_ps(r[i], bv));
}

// On tiles, C^T = W A^T: W's rows are the A operand, loaded from W in place,
// so that W is read once from memory (the hardware prefetchers follow its
// rows: software prefetches a few K blocks ahead made it slower, LSTMCell
// H=2048 W_hh at 1 to 32 rows). A^T is the B operand: A packed as W is for
// the tiles (pack(), the 16 x 16 transpose of each block's k-pairs). Two
// groups of 16 columns of C (32 rows of W) against one or two blocks of 16
// rows of A at a time, into the four result tiles; the rows of W come from L2
// for the further blocks of A.
void gemm_nt_tiles(int64_t M, int64_t N, int64_t K, const bf16* a, int64_t lda, const bf16* w,
                   int64_t ldw, float* c, int64_t ldc, const float* bias, int64_t j0,
                   int64_t j1, const bf16* at) {
  const int64_t kb = k_blocks(K), nrb = (M + kTileRows - 1) / kTileRows;
  j1 = std::min<int64_t>(j1, col_tiles(N));
  if (M <= 0 || j0 >= j1) return;
  // Two padded blocks of W, after B's blocks where this lays them out, in a
  // buffer of its own: A may be a block staged by the caller.
  const int64_t own = at ? 0 : nrb * kb;
  bf16* buf = thread_buffer<1>((own + 2) * kTileElems);
  if (!at) nt_operand(a, M, K, lda, buf);
  const bf16* bt = at ? at : buf;
  bf16* pad[2] = {buf + own * kTileElems, buf + (own + 1) * kTileElems};
  alignas(64) float out[kMaxTiles * kTileRows * kTileCols];
  begin();
  for (int64_t jg = j0; jg < j1; jg += 2) {
    const int ng = static_cast<int>(std::min<int64_t>(2, j1 - jg));
    int64_t n[2];
    for (int g = 0; g < 2; ++g)
      n[g] = g < ng ? std::min<int64_t>(kTileCols, N - (jg + g) * kTileCols) : 0;
    const bf16* wg[2] = {w + jg * kTileCols * ldw, w + (jg + 1) * kTileCols * ldw};
    for (int64_t i = 0; i < nrb; i += 2) {
      const int nb = static_cast<int>(std::min<int64_t>(2, nrb - i));
      _tile_zero(4);
      _tile_zero(5);
      _tile_zero(6);
      _tile_zero(7);
      for (int64_t k = 0; k < kb; ++k) {
        const bf16* b0 = bt + (i * kb + k) * kTileElems;
        _tile_loadd(1, b0, 64);
        if (nb > 1) _tile_loadd(2, b0 + kb * kTileElems, 64);
        load_w_tile(0, wg[0], ldw, K, n[0], k, pad[0]);
        _tile_dpbf16ps(4, 0, 1);
        if (nb > 1) _tile_dpbf16ps(6, 0, 2);
        if (ng > 1) {
          load_w_tile(1, wg[1], ldw, K, n[1], k, pad[1]);
          _tile_dpbf16ps(5, 3, 1);
          if (nb > 1) _tile_dpbf16ps(7, 3, 2);
        }
      }
      _tile_stored(4, out, 64);
      _tile_stored(5, out + 256, 64);
      _tile_stored(6, out + 512, 64);
      _tile_stored(7, out + 768, 64);
      for (int b = 0; b < nb; ++b) {
        const int64_t r0 = (i + b) * kTileRows, rows = std::min<int64_t>(kTileRows, M - r0);
        for (int g = 0; g < ng; ++g) {
          const int64_t c0 = (jg + g) * kTileCols;
          store_t(out + (2 * b + g) * 256, c + r0 * ldc + c0, ldc, rows, n[g],
                  bias ? bias + c0 : nullptr);
        }
      }
    }
  }
  end();
}

}  // namespace

// On tiles: gemm_nt_tiles; on the dot engine: gemm_nt_dot.
void gemm_nt(int64_t M, int64_t N, int64_t K, const bf16* a, int64_t lda, const bf16* w,
             int64_t ldw, float* c, int64_t ldc, const float* bias, int64_t j0, int64_t j1,
             const bf16* at) {
  if (g_engine.load(std::memory_order_relaxed) == Engine::kTiles)
    return gemm_nt_tiles(M, N, K, a, lda, w, ldw, c, ldc, bias, j0, j1, at);
  gemm_nt_dot(M, N, K, a, lda, w, ldw, c, ldc, bias, j0, j1);
}

int64_t nt_operand_size(int64_t M, int64_t K) {
  return g_engine.load(std::memory_order_relaxed) == Engine::kTiles
             ? (M + kTileRows - 1) / kTileRows * tile_size(K)
             : 0;
}

void nt_operand(const bf16* a, int64_t M, int64_t K, int64_t lda, bf16* dst) {
  pack(a, M, K, lda, dst, tile_size(K), 0, (M + kTileRows - 1) / kTileRows);
}

namespace {

// gemm_nn takes K in chunks of this many rows of W, every strip of columns of
// the chunk in turn, so that the rows' streams (one each) stay few.
constexpr int64_t kNnChunkK = 32;
// Prefetch distance of gemm_nn, in strips (of 32 columns) ahead on the same
// rows: without, 1.1-1.7 times the time (W beyond L2, 1 to 16 rows of A; the
// rows of W are as many streams as the chunk has rows).
constexpr int64_t kNnPrefetchStrips = 4;

// Rows [0, MB) of a strip of 32 columns of C (+)= A W over rows [k0, k0 + kk)
// of W, A staged in bfloat16 (row stride lda, zero past K). Each pair of W's
// rows is interleaved into the two vectors of 16 column pairs that vdpbf16ps
// takes; each row of A broadcasts its pair. cm: the strip's columns that exist.
template <int MB>
inline void dot_nn_strip(const bf16* a, int64_t lda, const bf16* w, int64_t ldw, int64_t K,
                         int64_t k0, int64_t kk, __mmask32 cm, float* c, int64_t ldc,
                         bool load_c, bool prefetch) {
  static_assert(2 * MB + 6 <= 32, "accumulators, rows of W and indices fit the 32 registers");
  alignas(64) static constexpr int16_t kLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,
                                                  37, 6, 38, 7, 39, 8,  40, 9,  41, 10, 42,
                                                  11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static constexpr int16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                  53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                  27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_load_si512(kHi);
  const __mmask16 m0 = static_cast<__mmask16>(cm), m1 = static_cast<__mmask16>(cm >> 16);
  __m512 acc[MB][2];
  for (int i = 0; i < MB; ++i) {
    acc[i][0] = load_c ? _mm512_maskz_loadu_ps(m0, c + i * ldc) : _mm512_setzero_ps();
    acc[i][1] = load_c ? _mm512_maskz_loadu_ps(m1, c + i * ldc + 16) : _mm512_setzero_ps();
  }
  const auto pair = [&](int64_t k, __m512i r1) __attribute__((always_inline)) {
    const __m512i r0 = _mm512_maskz_loadu_epi16(cm, w + k * ldw);
    const __m512bh v0 = reinterpret_cast<__m512bh>(_mm512_permutex2var_epi16(r0, lo, r1));
    const __m512bh v1 = reinterpret_cast<__m512bh>(_mm512_permutex2var_epi16(r0, hi, r1));
    for (int i = 0; i < MB; ++i) {
      int32_t ap;
      std::memcpy(&ap, a + i * lda + k, sizeof(ap));
      const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(ap));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, v0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, v1);
    }
  };
  const int64_t whole = k0 + (kk & ~int64_t{1});
  for (int64_t k = k0; k < whole; k += 2) {
    if (prefetch) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k * ldw + 32 * kNnPrefetchStrips), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + (k + 1) * ldw + 32 * kNnPrefetchStrips),
                   _MM_HINT_T0);
    }
    pair(k, _mm512_maskz_loadu_epi16(cm, w + (k + 1) * ldw));
  }
  if (whole < k0 + kk) pair(whole, _mm512_setzero_si512());  // row K - 1, paired with zeros
  for (int i = 0; i < MB; ++i) {
    _mm512_mask_storeu_ps(c + i * ldc, m0, acc[i][0]);
    _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc[i][1]);
  }
}

template <int R, int RMAX>
inline void dot_nn_rows(int n, const bf16* a, int64_t lda, const bf16* w, int64_t ldw, int64_t K,
                        int64_t k0, int64_t kk, __mmask32 cm, float* c, int64_t ldc, bool load_c,
                        bool prefetch) {
  if constexpr (R < RMAX) {
    if (n != R)
      return dot_nn_rows<R + 1, RMAX>(n, a, lda, w, ldw, K, k0, kk, cm, c, ldc, load_c, prefetch);
  }
  dot_nn_strip<R>(a, lda, w, ldw, K, k0, kk, cm, c, ldc, load_c, prefetch);
}

}  // namespace

// Per chunk of K and strip of 32 columns, the rows of A in as few runs of at
// most 12 as there can be, of sizes that differ by one at most; the strip's rows of W come from
// memory for the first run (prefetched) and from L1 for the others.
void gemm_nn(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const bf16* w,
             int64_t ldw, float* c, int64_t ldc, bool accumulate, int64_t j0, int64_t j1) {
  constexpr int RB = 12;
  const int64_t n1 = std::min<int64_t>(N, j1 * kTileCols);
  if (M <= 0 || j0 * kTileCols >= n1) return;
  const int64_t nrb = (M + kTileRows - 1) / kTileRows, width = k_blocks(K) * kTileK;
  bf16* st = staging(K, nrb);
  for (int64_t i = 0; i < nrb; ++i)
    stage(a + i * kTileRows * lda, lda, std::min<int64_t>(kTileRows, M - i * kTileRows), K,
          st + i * block_size(K));
  const int runs = static_cast<int>((M + RB - 1) / RB);
  for (int64_t k0 = 0; k0 < K; k0 += kNnChunkK) {
    const int64_t kk = std::min<int64_t>(kNnChunkK, K - k0);
    const bool load_c = accumulate || k0 > 0;
    for (int64_t s = j0 * kTileCols; s < n1; s += 2 * kTileCols) {
      const int64_t n = std::min<int64_t>(2 * kTileCols, n1 - s);
      const __mmask32 cm = n >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << n) - 1u);
      const bool prefetch = s + 32 * kNnPrefetchStrips < n1;
      for (int64_t k = 0, r = 0; k < runs; ++k) {
        const int nr = static_cast<int>(M / runs + (k < M % runs ? 1 : 0));
        dot_nn_rows<1, RB>(nr, st + r * width, width, w + s, ldw, K, k0, kk, cm, c + r * ldc + s,
                           ldc, load_c, prefetch && k == 0);
        r += nr;
      }
    }
  }
}

namespace {

// Column tiles [j0, j1) of C = A W (+ bias, or + C with accumulate). All of A
// is staged first, so that each group of column tiles is read from memory once
// and serves every block of rows from L1.
template <typename A>
void gemm_tiles(int64_t M, int64_t N, int64_t K, const A* a, int64_t lda, const bf16* w, float* c,
                int64_t ldc, const float* bias, bool accumulate, int64_t j0, int64_t j1) {
  const int64_t ts = tile_size(K), bs = block_size(K);
  const int64_t nrb = (M + kTileRows - 1) / kTileRows;
  bf16* st = staging(K, nrb);
  alignas(64) float out[kMaxTiles * kTileRows * kTileCols];
  for (int64_t i = 0; i < nrb; ++i)
    stage(a + i * kTileRows * lda, lda, std::min<int64_t>(kTileRows, M - i * kTileRows), K,
          st + i * bs);
  begin();
  for (int64_t jg = j0; jg < j1; jg += kMaxTiles) {
    const int nt = static_cast<int>(std::min<int64_t>(kMaxTiles, j1 - jg));
    const bf16* b[kMaxTiles];
    for (int t = 0; t < nt; ++t) b[t] = w + (jg + t) * ts;
    for (int64_t i = 0; i < nrb; ++i) {
      const int64_t r0 = i * kTileRows;
      const int64_t rr = std::min<int64_t>(kTileRows, M - r0);
      product(st + i * bs, K, b, nt, out, nullptr, static_cast<int>(rr));
      for (int t = 0; t < nt; ++t) {
        const int64_t n0 = (jg + t) * kTileCols;
        const int64_t n = std::min<int64_t>(kTileCols, N - n0);
        const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(m, bias + n0) : _mm512_setzero_ps();
        for (int64_t r = 0; r < rr; ++r) {
          float* cr = c + (r0 + r) * ldc + n0;
          __m512 v = _mm512_add_ps(_mm512_load_ps(out + t * 256 + r * kTileCols), bv);
          if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, cr));
          _mm512_mask_storeu_ps(cr, m, v);
        }
      }
    }
  }
  end();
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const bf16* a, int64_t lda, const bf16* w, float* c,
          int64_t ldc, const float* bias, int64_t j0, int64_t j1) {
  gemm_tiles(M, N, K, a, lda, w, c, ldc, bias, false, j0, j1);
}

void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const bf16* w, float* c,
          int64_t ldc, bool accumulate, int64_t j0, int64_t j1) {
  gemm_tiles(M, N, K, a, lda, w, c, ldc, nullptr, accumulate, j0, j1);
}

namespace {

// 16 values of a row of B from n0 (mask m), as bfloat16 bits zero-extended to 32.
inline __m512i b_words(const float* p, __mmask16 m) {
  return _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(to_bf16(_mm512_maskz_loadu_ps(m, p))));
}
inline __m512i b_words(const bf16* p, __mmask16 m) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
}

// K block by K block, every column tile of the block in turn: B's rows are
// read along their length, kTileK of them at a time, not 32 bytes of every row
// for each tile, a page apart for a wide B (bfloat16 W_hh of LSTMCell(2048),
// 8192 x 2048: 5.0 ms against 9.2, 1 thread, Intel Xeon).
template <typename Row>
void pack_kn_rows(const Row& row_ptr, int64_t K, int64_t N, bf16* dst, int64_t stride, int64_t j0,
                  int64_t j1) {
  const int64_t kb = k_blocks(K);
  for (int64_t b = 0; b < kb; ++b) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n0 = j * kTileCols;
      const int64_t n = std::max<int64_t>(0, std::min<int64_t>(kTileCols, N - n0));
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
      uint32_t* t = reinterpret_cast<uint32_t*>(dst + j * stride);
      // Row pair (k, k+1) of the tile's columns: word c = B[k][c] | B[k+1][c] << 16.
      for (int64_t k = b * kTileK; k < (b + 1) * kTileK; k += 2) {
        const auto row = [&](int64_t r) {
          return r < K ? b_words(row_ptr(r) + n0, m) : _mm512_setzero_si512();
        };
        const __m512i w = _mm512_or_si512(row(k), _mm512_slli_epi32(row(k + 1), 16));
        _mm512_storeu_si512(t + k / 2 * kTileCols, w);
      }
    }
  }
}


// Staging block of A^T: row r = column r of A [K, M] (r < rows), rounded; 16
// rows of A at a time, transposed in registers.
void stage_t(const float* a, int64_t lda, int64_t rows, int64_t K, bf16* dst) {
  const int64_t width = k_blocks(K) * kTileK;
  const __mmask16 m = static_cast<__mmask16>((1u << rows) - 1u);
  for (int64_t k0 = 0; k0 < width; k0 += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i)
      r[i] = k0 + i < K ? _mm512_maskz_loadu_ps(m, a + (k0 + i) * lda) : _mm512_setzero_ps();
    transpose16(r);
    for (int i = 0; i < 16; ++i)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i * width + k0),
                          reinterpret_cast<__m256i>(to_bf16(r[i])));
  }
}

}  // namespace

void pack_kn(const float* b, int64_t K, int64_t N, int64_t ldb, bf16* dst, int64_t stride,
             int64_t j0, int64_t j1) {
  pack_kn_rows([&](int64_t r) { return b + r * ldb; }, K, N, dst, stride, j0, j1);
}

void pack_kn(const float* const* rows, int64_t K, int64_t N, bf16* dst, int64_t stride,
             int64_t j0, int64_t j1) {
  pack_kn_rows([&](int64_t r) { return rows[r]; }, K, N, dst, stride, j0, j1);
}

// gemm_tn's K (the rows of a sequence) in chunks of kTnChunkK, so that the
// chunk of the packed B's (16 column tiles of 32 KB each for 256 columns, twice
// for dW_ih and dW_hh) stays in L2 while every block of A^T passes over it.
static_assert(kTnChunkK % kTileK == 0, "chunks of whole K blocks");

void pack_kn(const bf16* b, int64_t K, int64_t N, int64_t ldb, bf16* dst, int64_t stride,
             int64_t j0, int64_t j1) {
  pack_kn_rows([&](int64_t r) { return b + r * ldb; }, K, N, dst, stride, j0, j1);
}

void gemm_tn(int64_t M, int64_t K, const float* a, int64_t lda, const TnProduct* prods, int nb,
             int64_t i0, int64_t i1) {
  const int64_t ts = tile_size(K);
  bf16* st = staging(std::min(K, kTnChunkK));
  alignas(64) float out[kMaxTiles * kTileRows * kTileCols];
  begin();
  int64_t k0 = 0;
  do {
    const int64_t kc = std::min(kTnChunkK, K - k0), kb0 = k0 / kTileK;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r0 = i * kTileRows;
      const int64_t rr = std::min<int64_t>(kTileRows, M - r0);
      stage_t(a + k0 * lda + r0, lda, rr, kc, st);
      for (int p = 0; p < nb; ++p) {
        const TnProduct& pr = prods[p];
        const int64_t nj = col_tiles(pr.N);
        for (int64_t jg = 0; jg < nj; jg += kMaxTiles) {
          const int nt = static_cast<int>(std::min<int64_t>(kMaxTiles, nj - jg));
          const bf16* b[kMaxTiles];
          for (int t = 0; t < nt; ++t) b[t] = pr.w + (jg + t) * ts + kb0 * kTileElems;
          product(st, kc, b, nt, out);
          for (int t = 0; t < nt; ++t) {
            const int64_t n0 = (jg + t) * kTileCols;
            const int64_t n = std::min<int64_t>(kTileCols, pr.N - n0);
            const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
            for (int64_t r = 0; r < rr; ++r) {
              __m512 v = _mm512_load_ps(out + t * 256 + r * kTileCols);
              if (pr.cb) {
                _mm256_mask_storeu_epi16(pr.cb + (r0 + r) * pr.ldc + n0, m,
                                         reinterpret_cast<__m256i>(to_bf16(v)));
                continue;
              }
              float* c = pr.c + (r0 + r) * pr.ldc + n0;
              if (k0 > 0) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, c));
              _mm512_mask_storeu_ps(c, m, v);
            }
          }
        }
      }
    }
    k0 += kTnChunkK;
  } while (k0 < K);
  end();
}

#else  // not compiled for AMX

Engine best() { return Engine::kNone; }
void use(Engine e) {
  if (e != Engine::kNone) std::abort();
}
Engine in_use() { return Engine::kNone; }
bool dot_half_rate() { return false; }
void pack(const bf16*, int64_t, int64_t, int64_t, bf16*, int64_t, int64_t, int64_t) { std::abort(); }
bf16* staging(int64_t, int64_t) { std::abort(); }
void stage(const float*, int64_t, int64_t, int64_t, bf16*, int64_t) { std::abort(); }
void stage(const bf16*, int64_t, int64_t, int64_t, bf16*, int64_t) { std::abort(); }
void begin() { std::abort(); }
void end() { std::abort(); }
void product(const bf16*, int64_t, const bf16* const*, int, float*, Interleave*, int) { std::abort(); }
void product2(const bf16*, const bf16*, int64_t, const bf16* const*, int, float*, float*,
              Interleave*, int) {
  std::abort();
}
void gemm(int64_t, int64_t, int64_t, const bf16*, int64_t, const bf16*, float*, int64_t,
          const float*, int64_t, int64_t) {
  std::abort();
}
void gemm(int64_t, int64_t, int64_t, const float*, int64_t, const bf16*, float*, int64_t, bool,
          int64_t, int64_t) {
  std::abort();
}
void gemm_nt(int64_t, int64_t, int64_t, const bf16*, int64_t, const bf16*, int64_t, float*,
             int64_t, const float*, int64_t, int64_t, const bf16*) {
  std::abort();
}
int64_t nt_operand_size(int64_t, int64_t) { return 0; }
void nt_operand(const bf16*, int64_t, int64_t, int64_t, bf16*) { std::abort(); }
void gemm_nn(int64_t, int64_t, int64_t, const float*, int64_t, const bf16*, int64_t, float*,
             int64_t, bool, int64_t, int64_t) {
  std::abort();
}
void pack_kn(const float*, int64_t, int64_t, int64_t, bf16*, int64_t, int64_t, int64_t) {
  std::abort();
}
void pack_kn(const float* const*, int64_t, int64_t, bf16*, int64_t, int64_t, int64_t) {
  std::abort();
}
void pack_kn(const bf16*, int64_t, int64_t, int64_t, bf16*, int64_t, int64_t, int64_t) {
  std::abort();
}
void gemm_tn(int64_t, int64_t, const float*, int64_t, const TnProduct*, int, int64_t, int64_t) {
  std::abort();
}

#endif

}  // namespace fusedrnn::cpu::amx
