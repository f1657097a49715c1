// Fuzz target: the .npy reader (read_npy: campaign rates read back by analyze and report, fault
// lists).
#include <flipguard/report.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = flipguard::fuzz::write_input(
      "array.npy", {reinterpret_cast<const char*>(data), size});
  flipguard::fuzz::expect_clean([&] { flipguard::read_npy(path); });
  return 0;
}
