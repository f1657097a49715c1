#pragma once
/// \file
/// What every fuzz target shares (fuzz/README.md). A target is one reader fed arbitrary bytes:
/// it must return or throw flipguard::Error, the error every reader promises for a bad file;
/// anything else (a crash, a sanitizer report, another exception, a hang, unbounded memory) is a
/// finding. The readers read files, so the bytes go to a file first, in a folder of this process
/// (in /dev/shm when there is one, so that no disk is written per input).
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace flipguard::fuzz {

/// The folder of this process's input files, made on first use and removed at exit.
inline const std::filesystem::path& work_dir() {
  static const std::filesystem::path dir = [] {
    namespace fs = std::filesystem;
    const fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = base / ("flipguard-fuzz." + std::to_string(getpid()));
    fs::create_directories(d);
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(work_dir(), ec); });
    return d;
  }();
  return dir;
}

/// Writes `bytes` to `name` inside work_dir() (folders on the way made) and returns its path.
inline std::string write_input(const std::string& name, std::string_view bytes) {
  const std::filesystem::path p = work_dir() / name;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
    std::abort();
  }
  return p.string();
}

/// Splits an input into parts: a part is a 4-byte little-endian length and that many bytes (cut
/// short at the end of the input); the last part is whatever remains. How a target that reads
/// several files (IDX images and labels) gets them from one input.
class Parts {
 public:
  Parts(const uint8_t* data, size_t size) : rest_(reinterpret_cast<const char*>(data), size) {}
  std::string_view next() {
    if (rest_.size() < 4) return take(rest_.size());
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(static_cast<unsigned char>(rest_[i])) << (8 * i);
    rest_.remove_prefix(4);
    return take(std::min<size_t>(n, rest_.size()));
  }
  std::string_view rest() const { return rest_; }
  /// One byte to choose an option with (0 when the input has ended).
  uint8_t byte() {
    if (rest_.empty()) return 0;
    const auto b = static_cast<uint8_t>(rest_[0]);
    rest_.remove_prefix(1);
    return b;
  }

 private:
  std::string_view take(size_t n) {
    std::string_view v = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return v;
  }
  std::string_view rest_;
};

/// The input as a model file whose last four bytes are the CRC-32 of the rest (when it is long
/// enough to have one), so that mutations reach the checks behind the checksum; the checksum
/// itself is unit-tested (tests/test_nn.cpp).
inline std::string with_model_crc(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  if (bytes.size() >= 24) {
    const uint32_t crc = flipguard::crc32_of(bytes.data(), bytes.size() - 4);
    for (int i = 0; i < 4; ++i) bytes[bytes.size() - 4 + i] = static_cast<char>(crc >> (8 * i));
  }
  return bytes;
}

/// What the last expect_clean saw: empty when the reader accepted its input, else the
/// flipguard::Error's message (standalone_main prints it for every replayed input).
inline std::string& last_refusal() {
  static std::string text;
  return text;
}

/// Runs `read`: returns normally or with flipguard::Error, the readers' promise; any other
/// exception is reported and aborts, so that libFuzzer keeps the input as a finding.
template <class F>
void expect_clean(F&& read) {
  last_refusal().clear();
  try {
    read();
  } catch (const flipguard::Error& e) {
    last_refusal() = e.what();
    if (last_refusal().empty()) last_refusal() = "(an error without a message)";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: the reader threw an exception other than flipguard::Error: %s\n",
                 e.what());
    std::abort();
  }
}

}  // namespace flipguard::fuzz
