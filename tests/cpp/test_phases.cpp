// Unit tests of csrc/kernels/cpu/phases.h, the phase scheduler of the CPU
// passes (torch-free; run by ctest).
//
// For several layouts of phases (empty phases, single tasks, odd counts) and
// teams of 1 to 4, with the team's chunks run
//   - on threads of their own,
//   - one after another on the calling thread (a pool that runs the chunks it
//     was handed in turn), and
//   - as one chunk covering every thread index (a nested parallel region),
// every task must run exactly once, and none before every task of the earlier
// phases has finished. A task sees claims_from_back() set exactly on the thread
// that takes the tasks from the last down (thread index 1: with a team of two
// on threads of their own, the thread that is not the caller; never in a single
// chunk nor in a team of one, whatever the caller's flag), and the caller's flag
// is as it was once the phases have run.
#include <atomic>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/phases.h"

namespace {

using fusedrnn::cpu::Parallel;

int g_failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL %s\n", what.c_str());
  }
}

void on_threads(int64_t n, int64_t, const void* ctx, Parallel::Body body) {
  std::vector<std::thread> team;
  for (int64_t i = 1; i < n; ++i) team.emplace_back([=] { body(ctx, i, i + 1); });
  body(ctx, 0, 1);
  for (std::thread& t : team) t.join();
}

void in_turn(int64_t n, int64_t, const void* ctx, Parallel::Body body) {
  for (int64_t i = 0; i < n; ++i) body(ctx, i, i + 1);
}

void as_one(int64_t n, int64_t, const void* ctx, Parallel::Body body) { body(ctx, 0, n); }

void run_case(const std::vector<int64_t>& counts, int threads,
              void (*runner)(int64_t, int64_t, const void*, Parallel::Body), const char* name) {
  const int64_t P = static_cast<int64_t>(counts.size());
  std::vector<int64_t> first(P + 1, 0);
  for (int64_t p = 0; p < P; ++p) first[p + 1] = first[p] + counts[p];
  const int64_t total = first[P];
  std::unique_ptr<std::atomic<int>[]> runs(new std::atomic<int>[total]);
  for (int64_t t = 0; t < total; ++t) runs[t] = 0;
  std::unique_ptr<std::atomic<int64_t>[]> finished(new std::atomic<int64_t>[P]);
  for (int64_t p = 0; p < P; ++p) finished[p] = 0;
  std::atomic<int64_t> early{0};
  // Tasks that saw a claims_from_back() other than expected.
  std::atomic<int64_t> wrong_side{0};
  const std::thread::id caller = std::this_thread::get_id();
  const bool preset = threads % 2 == 1;
  fusedrnn::cpu::claims_from_back() = preset;
  std::vector<int64_t> starts(P + 1);
  std::vector<std::atomic<int64_t>> claims(P);
  const Parallel par{runner, threads};
  fusedrnn::cpu::run_phases(
      P, [&](int64_t p) { return counts[p]; },
      [&](int64_t p, int64_t i) {
        for (int64_t q = 0; q < p; ++q)
          if (finished[q].load(std::memory_order_acquire) != counts[q]) early.fetch_add(1);
        runs[first[p] + i].fetch_add(1);
        const bool back = fusedrnn::cpu::claims_from_back();
        if (((runner == as_one || threads == 1) && back) ||
            (runner == on_threads && threads == 2 &&
             back != (std::this_thread::get_id() != caller)))
          wrong_side.fetch_add(1);
        finished[p].fetch_add(1, std::memory_order_release);
      },
      threads, starts.data(), claims.data(), par);
  const bool restored = fusedrnn::cpu::claims_from_back() == preset;
  fusedrnn::cpu::claims_from_back() = false;
  const std::string what = std::string(name) + " threads=" + std::to_string(threads) +
                           " phases=" + std::to_string(P) + " tasks=" + std::to_string(total);
  int64_t wrong = 0;
  for (int64_t t = 0; t < total; ++t) wrong += runs[t].load() != 1;
  expect(wrong == 0, what + ": " + std::to_string(wrong) + " tasks not run exactly once");
  expect(early.load() == 0, what + ": " + std::to_string(early.load()) +
                                " tasks started before an earlier phase finished");
  expect(wrong_side.load() == 0, what + ": " + std::to_string(wrong_side.load()) +
                                     " tasks saw the wrong claims_from_back()");
  expect(restored, what + ": claims_from_back() not restored on the calling thread");
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::vector<std::vector<int64_t>> layouts = {{1}, {0}, {5}, {16, 4}, {1, 1, 1, 1}, {0, 3, 0, 2, 0}};
  for (int r = 0; r < 6; ++r) {
    std::vector<int64_t> c(1 + rng() % 300);
    for (int64_t& n : c) n = rng() % 18;
    layouts.push_back(c);
  }
  int cases = 0;
  for (const auto& counts : layouts) {
    for (int threads = 1; threads <= 4; ++threads) {
      run_case(counts, threads, on_threads, "own threads");
      run_case(counts, threads, in_turn, "chunks in turn");
      run_case(counts, threads, as_one, "one chunk");
      cases += 3;
    }
  }
  std::printf("%d cases, %d failures\n", cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
