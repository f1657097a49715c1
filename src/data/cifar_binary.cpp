/// \file
/// CIFAR-10 binary files (`cifar-10-batches-bin/*.bin`): fixed-size records of one label byte
/// followed by a 3 x 32 x 32 image stored as the 1024 red, then 1024 green, then 1024 blue bytes
/// (row-major), which is already the C x H x W layout of Dataset::images.
#include <cstring>

#include "file_bytes.hpp"
#include "flipguard/data.hpp"
#include "flipguard/error.hpp"

namespace flipguard {

namespace {

constexpr int64_t kSide = 32;
constexpr int64_t kPixelBytes = 3 * kSide * kSide;
constexpr int64_t kRecordBytes = 1 + kPixelBytes;
constexpr int64_t kNumClasses = 10;

/// Copies the records of one file into `images`/`labels` from row `first` on.
void copy_records(const std::string& path, const std::vector<uint8_t>& bytes, int64_t first,
                  uint8_t* images, int64_t* labels) {
  const int64_t count = static_cast<int64_t>(bytes.size()) / kRecordBytes;
  for (int64_t r = 0; r < count; ++r) {
    const uint8_t* record = bytes.data() + r * kRecordBytes;
    if (record[0] >= kNumClasses) {
      fail("CIFAR-10 binary file '", path, "': label ", int{record[0]}, " in record ", r,
           ", expected 0..", kNumClasses - 1);
    }
    labels[first + r] = record[0];
    std::memcpy(images + (first + r) * kPixelBytes, record + 1, kPixelBytes);
  }
}

}  // namespace

Dataset load_cifar_binary(const std::vector<std::string>& files) {
  if (files.empty()) fail("load_cifar_binary: no files given, expected at least one .bin file");
  std::vector<std::vector<uint8_t>> contents;
  int64_t total = 0;
  for (const std::string& path : files) {
    contents.push_back(data_detail::read_file_bytes(path, "CIFAR-10 binary file"));
    const size_t size = contents.back().size();
    if (size == 0 || size % kRecordBytes != 0) {
      fail("CIFAR-10 binary file '", path, "' has ", size,
           " bytes, expected a non-zero multiple of ", kRecordBytes,
           " (1 label byte + 3 x 32 x 32 pixel bytes per image)");
    }
    total += static_cast<int64_t>(size) / kRecordBytes;
  }

  Dataset out;
  out.name = "cifar10";
  out.images = torch::empty({total, 3, kSide, kSide}, torch::kUInt8);
  out.labels = torch::empty({total}, torch::kInt64);
  int64_t first = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    copy_records(files[f], contents[f], first, out.images.data_ptr<uint8_t>(),
                 out.labels.data_ptr<int64_t>());
    first += static_cast<int64_t>(contents[f].size()) / kRecordBytes;
    std::vector<uint8_t>().swap(contents[f]);  // release each file's bytes once copied
  }
  out.class_names = data_detail::cifar10_class_names();
  return out;
}

}  // namespace flipguard
