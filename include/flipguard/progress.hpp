#pragma once
/// \file
/// Progress of a long library call, for whatever displays it (the command line draws a line per
/// phase, see src/cli/progress.hpp). The library only reports; it never prints progress itself.
#include <functional>
#include <string>

namespace flipguard {

/// How far one phase of a long call has come: `done` of `total` `unit`.
struct Progress {
  std::string phase;  ///< "calibration", "golden run", "relevance", "iteration 2/5: relevance"
  double done = 0, total = 0;
  std::string unit;   ///< what is counted: "images", "formats"
};

/// Called from the thread that made the call, between steps (never from worker threads), at
/// least once at the start and once at the end of every phase (done == total).
using ProgressFn = std::function<void(const Progress&)>;

/// Calls `fn` when it is set.
inline void report(const ProgressFn& fn, const std::string& phase, double done, double total,
                   const std::string& unit) {
  if (fn) fn(Progress{phase, done, total, unit});
}

/// `fn` with every phase name prefixed by `prefix` (for a phase inside a larger one); empty
/// when `fn` is.
inline ProgressFn prefixed(const ProgressFn& fn, const std::string& prefix) {
  if (!fn) return {};
  return [fn, prefix](const Progress& p) { fn(Progress{prefix + p.phase, p.done, p.total, p.unit}); };
}

}  // namespace flipguard
