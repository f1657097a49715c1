#pragma once
// Progress of a long phase on standard error, as users of a terminal expect it: one line
// redrawn in place (fraction, rate, elapsed, time left) when standard error is a terminal;
// otherwise a plain line at most every 30 seconds and at the end, so logs stay readable;
// nothing with --quiet. In an MPI job only the first process draws.
#include <flipguard/progress.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace flipguard::cli {

enum class ProgressMode { Live, Plain, Quiet };

/// Chooses the mode for this run: Quiet when `quiet` or not the first process; otherwise Live
/// when standard error is a terminal, Plain when it is not. FLIPGUARD_PROGRESS=live|plain|quiet
/// overrides it (for tests and for terminals that do not redraw).
void set_progress_mode(bool quiet, bool first_process);
ProgressMode progress_mode();

/// The line of one phase ("golden run", "campaign", "epoch 3/40"). `unit` names what is
/// counted ("fault sets", "batches").
class ProgressLine {
 public:
  ProgressLine(std::string phase, std::string unit);
  ~ProgressLine();
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  /// `done` of `total`; `detail` is appended (", loss 0.75"). `seconds_left` < 0: estimated from
  /// the rate since the line started. Redraws at most 10 times a second (Live) or prints every
  /// 30 s (Plain).
  void update(double done, double total, const std::string& detail = "", double seconds_left = -1);
  /// Ends the phase at `done` of `total`: a finished line (Live and Plain).
  void finish(double done, double total, const std::string& detail = "");

  /// Clears the live line before another line is printed, and redraws it after (log() does).
  static void before_log();
  static void after_log();

 private:
  using Clock = std::chrono::steady_clock;
  std::string phase_, unit_;
  Clock::time_point start_, drawn_, first_at_;
  bool finished_ = false, drawn_once_ = false;
  double done_ = 0, total_ = 0, first_ = -1;  // first_: done at the first update (a resumed run)
  std::string text(const std::string& detail, double seconds_left) const;
  void draw(const std::string& line);
};

/// A library progress callback (flipguard/progress.hpp) drawn as one ProgressLine per phase: a
/// phase ends when it reaches its total or when another phase starts.
ProgressFn phase_lines();

}  // namespace flipguard::cli
