// Fuzz target: the IDX reader (load_idx, MNIST and Fashion-MNIST), plain or gzip-compressed.
// The input holds two parts (fuzz.hpp's Parts): the image file, then the label file.
#include <flipguard/data.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flipguard::fuzz::Parts parts(data, size);
  const std::string images = flipguard::fuzz::write_input("images-idx3-ubyte", parts.next());
  const std::string labels = flipguard::fuzz::write_input("labels-idx1-ubyte", parts.rest());
  flipguard::fuzz::expect_clean([&] { flipguard::load_idx(images, labels); });
  return 0;
}
