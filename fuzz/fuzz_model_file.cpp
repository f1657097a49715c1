// Fuzz target: the model file reader (load_model). The input is a model file; its last four
// bytes are replaced by the CRC-32 of the rest, so that mutations reach the header and tensor
// checks behind the checksum (the checksum itself is unit-tested: tests/test_nn.cpp).
#include <flipguard/model_file.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = flipguard::fuzz::write_input("model.fgm", flipguard::fuzz::with_model_crc(data, size));
  flipguard::fuzz::expect_clean([&] { flipguard::load_model(path); });
  return 0;
}
