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

/// Starts `flipguard ARGS` and kills it (SIGKILL, no chance to clean up) as soon as `file`
/// exists. True when it was killed after the file appeared (not ended before).
inline bool kill_once_written(const std::string& args, const std::string& file) {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    std::freopen("/dev/null", "w", stderr);
    std::freopen("/dev/null", "w", stdout);
    const std::string cmd = std::string(FLIPGUARD_BINARY) + " " + args;
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), (char*)nullptr);
    _exit(127);
  }
  bool written = false;
  for (int i = 0; i < 30000 && !written; ++i) {
    written = std::filesystem::exists(file);
    if (!written) usleep(10000);
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  return written && WIFSIGNALED(status);
}
#endif

#ifdef FLIPGUARD_SOURCE_DIR
/// The trained 6-epoch MNIST model (8-bit) that the command-line tests run on.
inline const std::string kModel =
    std::string(FLIPGUARD_SOURCE_DIR) + "/tests/data/mnist-e6/mnist-cnn-mnist-q8.fgm";
#endif

}  // namespace flipguard::test
