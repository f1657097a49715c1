#include "file_bytes.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "flipguard/error.hpp"
#include "flipguard/limits.hpp"

namespace flipguard::data_detail {

namespace {

/// Closes a gzFile when it goes out of scope.
struct GzCloser {
  gzFile file;
  ~GzCloser() { gzclose(file); }
};

/// zlib's description of the last error on `file`, or "" when there is none.
std::string gz_error(gzFile file) {
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (code == Z_OK) return "";
  if (code == Z_ERRNO) return std::strerror(errno);
  return message ? message : "unknown zlib error";
}

}  // namespace

std::vector<uint8_t> read_file_bytes(const std::string& path, const std::string& what) {
  errno = 0;
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) {
    fail("cannot open ", what, " '", path, "': ", errno ? std::strerror(errno) : "out of memory");
  }
  GzCloser closer{file};
  gzbuffer(file, 1u << 18);

  // Chunks grow from 64 KiB to 16 MiB: small files cost little, large ones few calls.
  std::vector<uint8_t> bytes;
  unsigned chunk = 1u << 16;
  for (;;) {
    const size_t old_size = bytes.size();
    if (static_cast<int64_t>(old_size) > kMaxDataFileBytes)
      fail(what, " '", path, "' is larger than ", kMaxDataFileBytes,
           " bytes (decompressed); expected a data set file of at most that size");
    bytes.resize(old_size + chunk);
    const int got = gzread(file, bytes.data() + old_size, chunk);
    if (got < 0) fail("cannot read ", what, " '", path, "': ", gz_error(file));
    bytes.resize(old_size + static_cast<size_t>(got));
    if (got == 0) break;
    chunk = std::min(chunk * 2, 1u << 24);
  }
  // A gzip stream cut short reads as a clean end of file; zlib reports it only through gzerror.
  const std::string error = gz_error(file);
  if (!error.empty()) fail("cannot read ", what, " '", path, "': ", error);
  return bytes;
}

const std::vector<std::string>& cifar10_class_names() {
  static const std::vector<std::string> names = {"airplane", "automobile", "bird",  "cat",
                                                 "deer",     "dog",        "frog",  "horse",
                                                 "ship",     "truck"};
  return names;
}

}  // namespace flipguard::data_detail
