// Fuzz target: fault lists to replay (read_fault_list, inject --faults): the first byte chooses
// CSV (bit 0 clear) or .npy; the rest is the file.
#include <flipguard/campaign.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flipguard::fuzz::Parts parts(data, size);
  const bool npy = parts.byte() & 1;
  const std::string path = flipguard::fuzz::write_input(npy ? "faults.npy" : "faults.csv", parts.rest());
  flipguard::fuzz::expect_clean([&] { flipguard::read_fault_list(path); });
  return 0;
}
