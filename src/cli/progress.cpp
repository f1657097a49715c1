#include "progress.hpp"

#include <flipguard/report.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/ioctl.h>
#include <unistd.h>

namespace flipguard::cli {

namespace {

ProgressMode g_mode = ProgressMode::Plain;
ProgressLine* g_live = nullptr;   // the line on screen (Live mode)
std::string g_live_text;          // what it shows
constexpr double kPlainSeconds = 30;
constexpr double kLiveSeconds = 0.1;

/// Columns of the terminal, to keep the live line on one row (a wrapped line cannot be redrawn).
size_t columns() {
  winsize w{};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return w.ws_col;
  return 100;
}

void put_live(const std::string& text) {
  std::string line = text.substr(0, columns() - 1);
  std::fprintf(stderr, "\r\033[K%s", line.c_str());
  std::fflush(stderr);
}

std::string bar(double fraction) {
  const int width = 20, full = static_cast<int>(std::floor(fraction * width + 1e-9));
  return "[" + std::string(full, '#') + std::string(width - full, '.') + "]";
}

}  // namespace

void set_progress_mode(bool quiet, bool first_process) {
  if (quiet || !first_process) {
    g_mode = ProgressMode::Quiet;
    return;
  }
  g_mode = isatty(STDERR_FILENO) ? ProgressMode::Live : ProgressMode::Plain;
  if (const char* e = std::getenv("FLIPGUARD_PROGRESS")) {
    if (!std::strcmp(e, "live")) g_mode = ProgressMode::Live;
    if (!std::strcmp(e, "plain")) g_mode = ProgressMode::Plain;
    if (!std::strcmp(e, "quiet")) g_mode = ProgressMode::Quiet;
  }
}

ProgressMode progress_mode() { return g_mode; }

ProgressLine::ProgressLine(std::string phase, std::string unit)
    : phase_(std::move(phase)), unit_(std::move(unit)), start_(Clock::now()), drawn_(start_) {}

ProgressLine::~ProgressLine() {
  if (g_live == this) {
    std::fputc('\n', stderr);  // an exception left the phase: keep its last state on screen
    g_live = nullptr;
  }
}

std::string ProgressLine::text(const std::string& detail, double seconds_left) const {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double fraction = total_ > 0 ? std::min(1.0, done_ / total_) : 1.0;
  char head[160];
  std::snprintf(head, sizeof head, "%s %.1f%% %.0f/%.0f %s", phase_.c_str(), 100 * fraction, done_,
                total_, unit_.c_str());
  std::string s = head;
  if (g_mode == ProgressMode::Live) s = phase_ + " " + bar(fraction) + s.substr(phase_.size());
  // The rate since the first update: what came before it (a resumed run's earlier work, a
  // golden run before a campaign's first step) is not this phase's pace.
  const double progressed = done_ - std::max(0.0, first_);
  const double span = std::chrono::duration<double>(Clock::now() - first_at_).count();
  if (span > 0 && progressed > 0 && total_ > 1) {  // no rate for a phase of one step
    char rate[64];
    std::snprintf(rate, sizeof rate, ", %.3g %s/s", progressed / span, unit_.c_str());
    s += rate;
  }
  s += ", " + format_duration(elapsed) + " elapsed";
  if (seconds_left < 0 && progressed > 0 && total_ > done_)
    seconds_left = span * (total_ - done_) / progressed;
  if (seconds_left >= 0 && done_ < total_) s += ", " + format_duration(seconds_left) + " left";
  return s + detail;
}

void ProgressLine::draw(const std::string& line) {
  drawn_ = Clock::now();
  drawn_once_ = true;
  if (g_mode == ProgressMode::Live) {
    g_live = this;
    g_live_text = line;
    put_live(line);
  } else if (g_mode == ProgressMode::Plain) {
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  }
}

void ProgressLine::update(double done, double total, const std::string& detail, double seconds_left) {
  if (first_ < 0) {
    first_ = done;
    first_at_ = Clock::now();
  }
  done_ = done;
  total_ = total;
  if (g_mode == ProgressMode::Quiet || finished_) return;
  const double since = std::chrono::duration<double>(Clock::now() - drawn_).count();
  const double period = g_mode == ProgressMode::Live ? kLiveSeconds : kPlainSeconds;
  if (drawn_once_ ? since < period : (g_mode == ProgressMode::Plain && since < period)) return;
  draw(text(detail, seconds_left));
}

void ProgressLine::finish(double done, double total, const std::string& detail) {
  if (finished_) return;
  finished_ = true;
  if (first_ < 0) {
    first_ = 0;
    first_at_ = start_;
  }
  done_ = done;
  total_ = total;
  if (g_mode == ProgressMode::Quiet) return;
  draw(text(detail, 0));
  if (g_mode == ProgressMode::Live) {
    std::fputc('\n', stderr);
    std::fflush(stderr);
    g_live = nullptr;
  }
}

void ProgressLine::before_log() {
  if (g_live) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
}

void ProgressLine::after_log() {
  if (g_live) put_live(g_live_text);
}

ProgressFn phase_lines() {
  struct Phases {
    std::unique_ptr<ProgressLine> line;
    std::string phase;
    double done = 0, total = 0;
  };
  auto st = std::make_shared<Phases>();
  return [st](const Progress& p) {
    if (st->line && st->phase != p.phase) {
      st->line->finish(st->done, st->total);
      st->line.reset();
    }
    if (!st->line) {
      st->line = std::make_unique<ProgressLine>(p.phase, p.unit);
      st->phase = p.phase;
    }
    st->done = p.done;
    st->total = p.total;
    if (p.done >= p.total) {
      st->line->finish(p.done, p.total);
      st->line.reset();
    } else {
      st->line->update(p.done, p.total);
    }
  };
}

}  // namespace flipguard::cli
