#pragma once
/// \file
/// Private helpers shared by the data set loaders in src/data/ (not part of the public API).
#include <cstdint>
#include <string>
#include <vector>

namespace flipguard::data_detail {

/// Reads a whole file through zlib, which decompresses gzip files and passes plain files through
/// unchanged. `what` describes the file in error messages, e.g. "IDX image file".
/// Throws Error when the file cannot be opened or its gzip stream is corrupt or truncated.
std::vector<uint8_t> read_file_bytes(const std::string& path, const std::string& what);

/// The ten CIFAR-10 classes in label order.
const std::vector<std::string>& cifar10_class_names();

}  // namespace flipguard::data_detail
