/// \file
/// IDX files (the MNIST and Fashion-MNIST format), plain or gzip-compressed.
///
/// Layout: a big-endian 32-bit magic number 0x000008NN (0x08 = unsigned bytes, NN = number of
/// dimensions), NN big-endian 32-bit sizes, then the data bytes in row-major order.
#include <cstring>
#include <sstream>

#include "file_bytes.hpp"
#include "flipguard/data.hpp"
#include "flipguard/error.hpp"

namespace flipguard {

namespace {

constexpr uint32_t kImageMagic = 0x00000803;  ///< unsigned bytes, 3 dimensions (N x H x W)
constexpr uint32_t kLabelMagic = 0x00000801;  ///< unsigned bytes, 1 dimension (N)
constexpr int64_t kNumClasses = 10;

/// The contents of one IDX file: its dimensions and a pointer to its data bytes.
struct IdxArray {
  std::vector<uint8_t> bytes;  ///< the whole file
  std::vector<int64_t> dims;
  const uint8_t* data() const { return bytes.data() + 4 + 4 * dims.size(); }
};

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string hex32(uint32_t value) {
  std::ostringstream os;
  os << "0x" << std::hex;
  os.width(8);
  os.fill('0');
  os << value;
  return os.str();
}

/// "60000 x 28 x 28"
std::string join_dims(const std::vector<int64_t>& dims) {
  std::ostringstream os;
  for (size_t i = 0; i < dims.size(); ++i) os << (i ? " x " : "") << dims[i];
  return os.str();
}

/// Reads an IDX file and checks its magic number and that it holds exactly the bytes its header
/// announces. `what` names the kind of file in error messages.
IdxArray read_idx(const std::string& path, uint32_t magic, const std::string& what) {
  IdxArray array;
  array.bytes = data_detail::read_file_bytes(path, what);
  const size_t found = array.bytes.size();
  const size_t ndims = magic & 0xFF;
  const size_t header = 4 + 4 * ndims;

  if (found < 4) {
    fail(what, " '", path, "' is truncated: found ", found, " bytes, expected at least ", header,
         " (the IDX header)");
  }
  const uint32_t file_magic = read_be32(array.bytes.data());
  if (file_magic != magic) {
    fail(what, " '", path, "' has magic number ", hex32(file_magic), ", expected ", hex32(magic),
         " (unsigned bytes, ", ndims, " dimension", ndims == 1 ? "" : "s", ")");
  }
  if (found < header) {
    fail(what, " '", path, "' is truncated: found ", found, " bytes, expected at least ", header,
         " (the IDX header)");
  }

  uint64_t payload = 1;
  for (size_t i = 0; i < ndims; ++i) {
    const uint32_t dim = read_be32(array.bytes.data() + 4 + 4 * i);
    array.dims.push_back(dim);
    if (__builtin_mul_overflow(payload, uint64_t{dim}, &payload)) {
      fail(what, " '", path, "' announces impossible dimensions ", join_dims(array.dims), "...");
    }
  }
  const uint64_t expected = header + payload;
  if (found != expected) {
    fail(what, " '", path, "' ", found < expected ? "is truncated" : "has trailing bytes",
         ": expected ", expected, " bytes (", header, " header + ", join_dims(array.dims),
         " data), found ", found);
  }
  return array;
}

}  // namespace

Dataset load_idx(const std::string& images_file, const std::string& labels_file) {
  const IdxArray images = read_idx(images_file, kImageMagic, "IDX image file");
  const IdxArray labels = read_idx(labels_file, kLabelMagic, "IDX label file");
  const int64_t n = images.dims[0];
  if (labels.dims[0] != n) {
    fail("IDX files disagree: '", images_file, "' holds ", n, " images but '", labels_file,
         "' holds ", labels.dims[0], " labels");
  }

  Dataset out;
  out.images = torch::empty({n, 1, images.dims[1], images.dims[2]}, torch::kUInt8);
  // (An empty file has no data to copy: memcpy from or to a null pointer is undefined even for
  // zero bytes, as UBSan reported.)
  if (out.images.numel() > 0)
    std::memcpy(out.images.data_ptr<uint8_t>(), images.data(), out.images.numel());
  out.labels = torch::empty({n}, torch::kInt64);
  int64_t* label = out.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    label[i] = labels.data()[i];
    if (label[i] >= kNumClasses) {
      fail("IDX label file '", labels_file, "': label ", label[i], " at index ", i,
           ", expected 0..", kNumClasses - 1);
    }
  }
  for (int64_t c = 0; c < kNumClasses; ++c) out.class_names.push_back(std::to_string(c));
  return out;
}

}  // namespace flipguard
