#include <flipguard/error.hpp>
#include <flipguard/io.hpp>

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <iterator>
#include <unistd.h>

namespace flipguard {

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write '", path, "': cannot create ", tmp);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      fail("cannot write '", path, "': write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("cannot write '", path, "': rename from ", tmp, " failed: ", std::strerror(errno));
  }
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
