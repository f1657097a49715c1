// Fuzz target: the CIFAR-10 binary reader (load_cifar_binary), one batch file.
#include <flipguard/data.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = flipguard::fuzz::write_input(
      "test_batch.bin", {reinterpret_cast<const char*>(data), size});
  flipguard::fuzz::expect_clean([&] { flipguard::load_cifar_binary({path}); });
  return 0;
}
