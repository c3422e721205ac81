// bfloat16 products on Intel AMX tiles (Sapphire Rapids and later), or with
// AVX512-BF16 dot products where the CPU has no tiles (Engine below): the
// input projection and the recurrent product of a bfloat16 layer, accumulated
// in float32 (DESIGN.md, precision). The rest of a step (cell math, state)
// stays in the float32 kernels.
//
// A tile product takes A as a staged block of 16 rows x KB*32 bfloat16 (rows
// and K past the operand's end are zero) and a weight W [rows, K] packed as
// column tiles: tile j holds W rows 16j..16j+15 for all of K, as KB blocks of
// 16 k-pairs x 16 columns x 2 (the tiles' VNNI layout), 512 bfloat16 each.
// The result of a tile is 16 x 16 float32, row-major.
//
// Compiled with the AMX flags in its own file (amx_bf16.cpp); where it is not,
// best() is kNone and nothing else may be called.
#pragma once

#include <cstdint>

namespace fusedrnn::cpu::amx {

using bf16 = uint16_t;  // bfloat16 bits

constexpr int kTileRows = 16;
constexpr int kTileCols = 16;
constexpr int kTileK = 32;
constexpr int64_t kTileElems = kTileCols * kTileK;  // bfloat16 per packed K block
constexpr int kMaxTiles = 4;                         // result tiles per product()

// What runs the products: AMX tiles, or where the CPU has none (AMD Zen 4 and
// later, Intel Cooper Lake), AVX512-BF16 dot products (vdpbf16ps) on the same
// packed operands and staged blocks, summed in float32 likewise (in another
// order: the results may differ in the last bits).
enum class Engine { kNone, kDot, kTiles };

// The best engine this build, the CPU and the OS allow (the tile data is
// requested from the OS here, once). kTiles allows kDot too.
Engine best();
// The engine of the products from here on, process-wide: kNone, or one that
// best() allows. in_use() says which.
void use(Engine e);
Engine in_use();
// Whether this core issues a 512-bit vdpbf16ps once a cycle, on 256-bit
// datapaths, half the rate of cores with 512-bit ones (Zen 5): there the dot
// products of a few rows keep up with those of more. Read as AMD family 19h
// with the dot engine: Zen 4 (Zen 3 shares the family without AVX512-BF16).
// Zen 5's parts with 256-bit datapaths (family 1Ah too) are not told apart and
// keep the rule of the 512-bit ones.
bool dot_half_rate();

constexpr int64_t k_blocks(int64_t K) { return (K + kTileK - 1) / kTileK; }
constexpr int64_t col_tiles(int64_t rows) { return (rows + kTileCols - 1) / kTileCols; }
// bfloat16 elements of one packed column tile.
constexpr int64_t tile_size(int64_t K) { return k_blocks(K) * kTileElems; }

// Packs column tiles [j0, j1) of W [rows, K] (row stride ldw) to dst + j * stride;
// tiles past col_tiles(rows) come out zero.
void pack(const bf16* w, int64_t rows, int64_t K, int64_t ldw, bf16* dst, int64_t stride,
          int64_t j0, int64_t j1);

// The same from B [K, N] in float32 (row stride ldb), for C = A B: tile j holds
// columns 16j..16j+15 of B.
void pack_kn(const float* b, int64_t K, int64_t N, int64_t ldb, bf16* dst, int64_t stride,
             int64_t j0, int64_t j1);

// The same with B's rows given as pointers (rows[k] + n), and from B in bfloat16.
void pack_kn(const float* const* rows, int64_t K, int64_t N, bf16* dst, int64_t stride,
             int64_t j0, int64_t j1);
void pack_kn(const bf16* b, int64_t K, int64_t N, int64_t ldb, bf16* dst, int64_t stride,
             int64_t j0, int64_t j1);

// Staging for `blocks` blocks of A on this thread, each kTileRows x
// k_blocks(K) * kTileK, one after the other.
bf16* staging(int64_t K, int64_t blocks = 1);
constexpr int64_t block_size(int64_t K) { return kTileRows * k_blocks(K) * kTileK; }
// Rows [0, rows) of src (row stride ld, rows <= kTileRows) into a staging
// block, rounded to nearest even; the rest zero. With ldd, the block's rows are
// wider (ldd >= k_blocks(K) * kTileK, a multiple of kTileK) and this writes
// their first k_blocks(K) * kTileK columns: a block staged from two operands
// side by side (A = [X | H], K blocks of X then of H).
void stage(const float* src, int64_t ld, int64_t rows, int64_t K, bf16* dst, int64_t ldd = 0);
void stage(const bf16* src, int64_t ld, int64_t rows, int64_t K, bf16* dst, int64_t ldd = 0);

// Around a run of product() calls on one thread: takes the engine in use (for
// those calls) and loads and releases the tile configuration.
void begin();
void end();

// Vector work run in among a product's tile instructions, so that the core
// computes it while the tiles multiply (run one after the other, the two do
// not overlap): fn(ctx, j) for j in [next, end), an even share after each K
// block. next advances as items run; the caller sets end for each product.
struct Interleave {
  void (*fn)(const void* ctx, int64_t j) = nullptr;
  const void* ctx = nullptr;
  int64_t next = 0, end = 0;
};

// out[t] (16 x 16 float32, at out + t * 256) = staged A x tile b[t], t < nt <= kMaxTiles,
// over K columns of A (the block's rows k_blocks(K) * kTileK wide, zero past K).
// Rows [0, rows) of out are the block's; the dot engine computes only those
// (a step of one row multiplies one), and the rest of out is undefined; nor
// does it multiply the zero pairs past K in the last block.
void product(const bf16* a, int64_t K, const bf16* const* b, int nt, float* out,
             Interleave* work = nullptr, int rows = kTileRows);

// The same for two staged blocks of A sharing each tile of W (nt <= 2): out0[t]
// = a0 x b[t], out1[t] = a1 x b[t]; the first block whole, rows1 rows of the second.
void product2(const bf16* a0, const bf16* a1, int64_t K, const bf16* const* b, int nt,
              float* out0, float* out1, Interleave* work = nullptr, int rows1 = kTileRows);

// Column tiles [j0, j1) of C[M, N] (row stride ldc) = A[M, K] (bfloat16, row
// stride lda) W^T + bias (bias [N] or null), W [N, K] packed with stride
// tile_size(K). Calls begin() and end() itself.
void gemm(int64_t M, int64_t N, int64_t K, const bf16* a, int64_t lda, const bf16* w, float* c,
          int64_t ldc, const float* bias, int64_t j0, int64_t j1);

// Column tiles [j0, j1) of C[M, N] (row stride ldc) = A[M, K] W[N, K]^T + bias
// (bias [N] or null), A (row stride lda) and W (row stride ldw) in bfloat16,
// W read in place: for a weight that serves few rows in all (a cell call, a
// short sequence), where packing W would cost more than the products save. On
// the dot engine, dot products along K; on tiles, C^T = W A^T, W's rows loaded
// as the tiles' A operand (none past its n rows or K columns) and A^T staged;
// it calls begin() and end() itself. at: A as nt_operand() lays it out (its
// ceil(M / 16) blocks), or null for the tiles to lay it out on this thread; the
// dot engine reads A and ignores at.
void gemm_nt(int64_t M, int64_t N, int64_t K, const bf16* a, int64_t lda, const bf16* w,
             int64_t ldw, float* c, int64_t ldc, const float* bias, int64_t j0, int64_t j1,
             const bf16* at = nullptr);

// A [M, K] (row stride lda) laid out once as gemm_nt's tiles take it (A^T,
// pack()'s layout), for the products that share it: the gates of a step, the
// column groups of a call. nt_operand_size() bfloat16 elements, none on the dot
// engine, which reads A as it is. Block b of 16 rows starts at b * tile_size(K).
int64_t nt_operand_size(int64_t M, int64_t K);
void nt_operand(const bf16* a, int64_t M, int64_t K, int64_t lda, bf16* dst);

// Column tiles [j0, j1) of C[M, N] (=, or += with accumulate) = A[M, K] (float32,
// row stride lda, rounded to bfloat16) W[K, N] on the dot engine's
// instructions, W (bfloat16, row stride ldw) read in place: the backward
// through a weight that serves few rows in all (a cell call), where packing W
// would cost more than the products save.
void gemm_nn(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const bf16* w,
             int64_t ldw, float* c, int64_t ldc, bool accumulate, int64_t j0, int64_t j1);

// Column tiles [j0, j1) of C[M, N] (=, or += with accumulate) = A[M, K] (float32,
// row stride lda, rounded to bfloat16) times W packed with stride tile_size(K).
// Calls begin() and end() itself.
void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const bf16* w, float* c,
          int64_t ldc, bool accumulate, int64_t j0, int64_t j1);

// Row tiles [i0, i1) of C_p[M, N_p] = A^T B_p, p < nb <= 2, where A [K, M] is
// float32 (row stride lda, rounded to bfloat16) and B_p is packed by pack_kn
// with stride tile_size(K): the weight gradients dG^T X, each block of A^T
// staged once for both products. Calls begin() and end() itself.
// gemm_tn takes K in chunks of this many rows, summing the chunks in C.
constexpr int64_t kTnChunkK = 1024;
// C in float32 (c), or with K <= kTnChunkK rounded once to bfloat16 (cb).
struct TnProduct {
  int64_t N;
  const bf16* w;
  float* c;
  int64_t ldc;
  bf16* cb = nullptr;
};
void gemm_tn(int64_t M, int64_t K, const float* a, int64_t lda, const TnProduct* prods, int nb,
             int64_t i0, int64_t i1);

}  // namespace fusedrnn::cpu::amx
