// A LibTorch reader run in a child process (src/util/torch_child.hpp).
#include "torch_child.hpp"

#include <flipguard/error.hpp>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

// The sanitizers' interface, there only in a sanitized build (a weak reference: null otherwise).
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace flipguard {

std::string torch_message(const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  const std::string what = c10 ? c10->what_without_backtrace() : e.what();
  // The first line that says something (ErrorReport's text can start with an empty line).
  size_t from = what.find_first_not_of("\n \t");
  if (from == std::string::npos) return "LibTorch gave no reason";
  return what.substr(from, what.find('\n', from) - from);
}

namespace {

/// In the child: bounds the address space to what is mapped now, plus 8 times the file and
/// 1 GiB (ResNet-50's 100 MB archive needs a few hundred MB to read).
void bound_memory(const std::string& path) {
  std::error_code size_ec;
  const auto file = std::filesystem::file_size(path, size_ec);
  long pages = 0;
  if (FILE* statm = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(statm, "%ld", &pages) != 1) pages = 0;
    std::fclose(statm);
  }
  if (pages <= 0 || size_ec) return;
  const rlim_t limit = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) +
                       8 * static_cast<rlim_t>(file) + (rlim_t{1} << 30);
  const rlimit r{limit, limit};
  setrlimit(RLIMIT_AS, &r);
}

}  // namespace

std::string read_in_child(const std::string& path, const std::function<void()>& read) {
  int fds[2];
  if (pipe(fds) != 0) fail("cannot check '", path, "' in a child process: pipe: ", std::strerror(errno));
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    fail("cannot check '", path, "' in a child process: fork: ", std::strerror(errno));
  }
  if (pid == 0) {
    close(fds[0]);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, SIG_DFL);
    // In a sanitized build, a sanitizer that ends the child (out of memory past the bound)
    // must not run the parent's death callback (libFuzzer's would save the input as a crash).
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(nullptr);
    bound_memory(path);
    // One thread: the parent's OpenMP pool does not exist in a forked child, and a parallel
    // region there would wait for it.
    at::set_num_threads(1);
    std::string said = "read";
    try {
      read();
    } catch (const Error& e) {
      said = std::string("flipguard:") + e.what();
    } catch (const std::exception& e) {
      said = "error:" + torch_message(e);
    }
    for (size_t at = 0; at < said.size();) {
      const ssize_t n = write(fds[1], said.data() + at, said.size() - at);
      if (n <= 0) break;
      at += static_cast<size_t>(n);
    }
    _exit(0);  // no destructors, no atexit handlers: they belong to the parent
  }
  close(fds[1]);
  std::string said;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0) said.append(buf, static_cast<size_t>(n));
    else if (n == 0 || errno != EINTR) break;
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (said.rfind("flipguard:", 0) == 0) throw Error(said.substr(10));
  if (said.rfind("error:", 0) == 0) return said.substr(6);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && said == "read") return "";
  return "LibTorch's reader crashed on it (" +
         (WIFSIGNALED(status) ? std::string(strsignal(WTERMSIG(status)))
                              : "exit status " + std::to_string(WEXITSTATUS(status))) +
         ")";
}

}  // namespace flipguard
