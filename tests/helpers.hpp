#pragma once
/// \file
/// What every test executable shares: scratch folders, file contents, running the flipguard
/// program and shell commands.
#include <flipguard/error.hpp>

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

namespace flipguard::test {

/// A fresh folder under the system's temporary folder, removed with everything in it when the
/// test ends.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix = "flipguard-test") {
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  /// `path/name` as a string; creates the parent folders of `name`.
  std::string file(const std::string& name) const {
    const std::filesystem::path p = path / name;
    std::filesystem::create_directories(p.parent_path());
    return p.string();
  }
  std::string str() const { return path.string(); }
  /// How many plain files the folder holds (not counting subfolders' contents).
  size_t count() const {
    size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(path)) n += e.is_regular_file();
    return n;
  }
};

inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

/// The whole contents of a file (empty when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// The message of the flipguard::Error that `action` throws; a test failure when it throws none.
inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a flipguard::Error";
  return "(no error)";
}

/// What a command printed (stdout and stderr) and its exit status (128 + signal when killed).
struct Result {
  int status = -1;
  std::string output;
};

/// Runs a shell command line, stderr with stdout.
inline Result run_shell(const std::string& line) {
  const std::string cmd = line + " 2>&1";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

#ifdef FLIPGUARD_BINARY
/// Runs the flipguard program with `args` (a shell command line's arguments).
inline Result run(const std::string& args) {
  return run_shell(std::string(FLIPGUARD_BINARY) + " " + args);
}

/// Starts a shell command line in a session of its own (kill_session reaches every process it
/// starts, mpirun's too), stdout and stderr to `log`; its process id (and session id).
inline pid_t start_shell(const std::string& line, const std::string& log = "/dev/null") {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  setsid();
  if (!std::freopen(log.c_str(), "w", stdout) || dup2(fileno(stdout), fileno(stderr)) < 0) _exit(126);
  execl("/bin/sh", "sh", "-c", ("exec " + line).c_str(), (char*)nullptr);
  _exit(127);
}

/// Waits for a process started by start_shell: its exit status, 128 + signal when killed.
inline int wait_status(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Sends `sig` to every process of session `sid` (mpirun puts its processes into process groups
/// of their own, but not into sessions of their own).
inline void kill_session(pid_t sid, int sig) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (getsid(pid) == sid) kill(pid, sig);
  }
  usleep(50000);  // the killed processes run no more code by then
}

/// Waits until `file` exists or the process ends (up to five minutes); whether the file exists.
inline bool wait_for_file(pid_t pid, const std::string& file) {
  for (int i = 0; i < 30000; ++i) {
    if (std::filesystem::exists(file)) return true;
    siginfo_t info{};  // ended? (WNOWAIT: wait_status still reads its status)
    if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == pid)
      return std::filesystem::exists(file);
    usleep(10000);
  }
  return false;
}

/// Starts `flipguard ARGS` and kills it (SIGKILL, no chance to clean up) as soon as `file`
/// exists. True when it was killed after the file appeared (not ended before).
inline bool kill_once_written(const std::string& args, const std::string& file) {
  const pid_t pid = start_shell(std::string(FLIPGUARD_BINARY) + " " + args);
  if (pid < 0) return false;
  const bool written = wait_for_file(pid, file);
  kill_session(pid, SIGKILL);
  return wait_status(pid) == 128 + SIGKILL && written;
}
#endif

#ifdef FLIPGUARD_SOURCE_DIR
/// The trained 6-epoch MNIST model (8-bit) that the command-line tests run on.
inline const std::string kModel =
    std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist-q8.fgm";
#endif

}  // namespace flipguard::test
