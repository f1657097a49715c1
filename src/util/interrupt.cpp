// Signal handling for long runs: the handler only touches lock-free atomics and fixed buffers and
// calls async-signal-safe functions (unlink, sigaction, raise).
#include <flipguard/interrupt.hpp>

#include <atomic>
#include <csignal>
#include <cstring>
#include <mutex>

#include <unistd.h>

namespace flipguard {

namespace {

constexpr int kSlots = 16;
constexpr size_t kPathBytes = 4096;

struct Slot {
  std::atomic<bool> used{false};  ///< claimed by a writer
  std::atomic<bool> ready{false};  ///< path written: the handler may unlink it
  char path[kPathBytes];
};

Slot g_slots[kSlots];
std::atomic<int> g_stop{0};
std::atomic<int> g_scopes{0};
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free,
              "the signal handler needs lock-free atomics");

void end_as_default(int sig) {
  for (Slot& s : g_slots)
    if (s.ready.load()) ::unlink(s.path);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  raise(sig);
}

void on_signal(int sig) {
  int none = 0;
  if (g_scopes.load() > 0 && g_stop.compare_exchange_strong(none, sig)) return;
  end_as_default(sig);
}

}  // namespace

void install_stop_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : {SIGINT, SIGTERM}) {
      // A process started with the signal ignored (nohup, a shell's background job) keeps it so.
      struct sigaction old {};
      if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
      sigaction(sig, &sa, nullptr);
    }
  });
}

int stop_signal() { return g_stop.load(); }

std::string signal_name(int sig) {
  if (sig == SIGINT) return "SIGINT";
  if (sig == SIGTERM) return "SIGTERM";
  return "signal " + std::to_string(sig);
}

StopScope::StopScope() {
  g_stop.store(0);
  g_scopes.fetch_add(1);
}

StopScope::~StopScope() { g_scopes.fetch_sub(1); }

namespace detail {

TempFileGuard::TempFileGuard(const std::string& path) {
  if (path.size() >= kPathBytes) return;
  for (int i = 0; i < kSlots; ++i) {
    bool free = false;
    if (g_slots[i].used.compare_exchange_strong(free, true)) {
      std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
      g_slots[i].ready.store(true);
      slot_ = i;
      return;
    }
  }
}

TempFileGuard::~TempFileGuard() {
  if (slot_ < 0) return;
  g_slots[slot_].ready.store(false);
  g_slots[slot_].used.store(false);
}

}  // namespace detail

}  // namespace flipguard
