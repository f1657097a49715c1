#pragma once
/// \file
/// flipguard's one way to run work on several threads. The engines, campaigns and the image
/// folder loader each split their work into `workers` parts that need no locking of their own;
/// a few lines of std::thread serve that better than a task scheduler (oneTBB would add a
/// dependency and its own thread pool beside LibTorch's, for no gain in these static splits).
#include <chrono>
#include <functional>

namespace flipguard {

/// Runs task(w) for every worker w in [0, workers), each on a thread of its own; worker 0 runs on
/// the calling thread. Returns when all have finished; rethrows the first exception any of them
/// threw (the others run to their end). workers < 1 counts as 1.
void parallel_for(int workers, const std::function<void(int worker)>& task);

/// The same, every worker on a thread of its own, while the calling thread calls `tick` about
/// every `period` until all have finished (progress lines, checkpoints). An exception from tick
/// is rethrown after the workers finish; one from a worker stops the ticks.
void parallel_for(int workers, const std::function<void(int worker)>& task,
                  std::chrono::milliseconds period, const std::function<void()>& tick);

}  // namespace flipguard
