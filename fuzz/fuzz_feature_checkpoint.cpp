// Fuzz target: the checkpoint of Algorithm 1 (load_feature_checkpoint, `harden features
// --resume`): a model file whose metadata holds the state between iterations. As in
// fuzz_model_file, the last four bytes are replaced by the CRC-32 of the rest. The seeds carry
// the signature "fuzz", which the target asks for.
#include <flipguard/harden.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = flipguard::fuzz::write_input("features.ckpt", flipguard::fuzz::with_model_crc(data, size));
  flipguard::fuzz::expect_clean([&] {
    double baseline = 0;
    flipguard::load_feature_checkpoint(path, "fuzz", baseline);
  });
  return 0;
}
