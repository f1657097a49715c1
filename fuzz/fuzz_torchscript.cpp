// Fuzz target: the TorchScript import (import_torchscript): the archive LibTorch reads and the
// graph flipguard converts. The first byte chooses the input shape the import is told
// (3x20x20, 3x16x16, 4x8x8 or 1x28x28, those of the seeds); the rest is the .pt file.
#include <flipguard/torchscript.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flipguard::fuzz::Parts parts(data, size);
  static const flipguard::Shape shapes[] = {{3, 20, 20}, {3, 16, 16}, {4, 8, 8}, {1, 28, 28}};
  flipguard::ImportOptions o;
  o.input = shapes[parts.byte() & 3];
  o.mean.assign(static_cast<size_t>(o.input.c), 0.5);
  o.std.assign(static_cast<size_t>(o.input.c), 0.25);
  o.arch = "fuzz";
  const std::string path = flipguard::fuzz::write_input("module.pt", parts.rest());
  flipguard::fuzz::expect_clean([&] { flipguard::import_torchscript(path, o); });
  return 0;
}
