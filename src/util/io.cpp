#include <flipguard/error.hpp>
#include <flipguard/interrupt.hpp>
#include <flipguard/io.hpp>

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <iterator>
#include <csignal>
#include <memory>
#include <pthread.h>
#include <unistd.h>

namespace flipguard {

namespace {

/// Whether process `pid` runs on this machine: it exists and is not a zombie (a killed process
/// that nobody has waited for yet).
bool process_runs(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;  // no /proc: trust kill()
  const size_t paren = line.rfind(')');  // the state follows the command name in parentheses
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

}  // namespace

void remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const std::string prefix = p.filename().string() + ".tmp.";
  std::error_code ec;
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid = name.substr(prefix.size());
    if (pid.size() > 9 || !std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    if (!process_runs(static_cast<pid_t>(std::stol(pid)))) {
      std::error_code rm;
      fs::remove(it->path(), rm);
    }
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_files_atomic({{path, bytes}});
}

void write_files_atomic(const std::vector<std::pair<std::string, std::string>>& files) {
  // Every file to its temporary first; a SIGINT or SIGTERM that ends the process meanwhile
  // deletes the temporaries (TempFileGuard), so nothing has changed.
  std::vector<std::string> tmps;
  std::vector<std::unique_ptr<detail::TempFileGuard>> guards;
  auto remove_tmps = [&] {
    for (const std::string& t : tmps) std::remove(t.c_str());
  };
  for (const auto& [path, bytes] : files) {
    remove_stale_temporaries(path);
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    guards.push_back(std::make_unique<detail::TempFileGuard>(tmp));
    tmps.push_back(tmp);
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      tmps.pop_back();
      remove_tmps();
      fail("cannot write '", path, "': cannot create ", tmp);
    }
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      remove_tmps();
      fail("cannot write '", path, "': write failed (disk full?)");
    }
  }
  // Then the renames, with SIGINT and SIGTERM held back until all are done: a signal does not
  // end the process between two of them.
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  for (size_t i = 0; i < files.size(); ++i)
    if (std::rename(tmps[i].c_str(), files[i].first.c_str()) != 0) {
      const int err = errno;
      for (size_t k = i; k < tmps.size(); ++k) std::remove(tmps[k].c_str());
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      fail("cannot write '", files[i].first, "': rename from ", tmps[i], " failed: ",
           std::strerror(err));
    }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

namespace {
std::ifstream open_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    fail("cannot read ", what, " '", path, "': it is a folder, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", what, " '", path, "': ", std::strerror(errno));
  return in;
}
}  // namespace

std::string read_file_head(const std::string& path, size_t n, const std::string& what) {
  std::ifstream in = open_file(path, what);
  std::string bytes(n, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(n));
  if (in.bad()) fail("cannot read ", what, " '", path, "': read failed");
  bytes.resize(static_cast<size_t>(in.gcount()));
  return bytes;
}

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream in = open_file(path, what);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read ", what, " '", path, "': read failed");
  return bytes;
}

uint32_t crc32_of(const void* data, size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const Bytef* p = static_cast<const Bytef*>(data);
  // zlib takes uInt lengths: feed large buffers in pieces.
  while (size > 0) {
    const uInt n = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = crc32(crc, p, n);
    p += n;
    size -= n;
  }
  return static_cast<uint32_t>(crc);
}

uint32_t file_crc32(const std::string& path, const std::string& what) {
  const std::string bytes = read_file(path, what);
  return crc32_of(bytes.data(), bytes.size());
}

}  // namespace flipguard
