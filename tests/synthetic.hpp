#pragma once
// Synthetic data shared by the tests.
#include <flipguard/data.hpp>

#include <string>

namespace flipguard::synthetic {

/// A learnable task for 28x28 networks that end in global average pooling: the class is the
/// brightness level of a noisy image (class k: pixels 24k + uniform noise in [0, 40]).
inline Dataset brightness_levels(int64_t n, uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  Dataset d;
  d.name = "levels";
  d.labels = torch::randint(0, 10, {n}, gen, torch::kLong);
  auto noise = torch::randint(-20, 21, {n, 1, 28, 28}, gen, torch::kLong);
  d.images = (noise + 20 + 24 * d.labels.view({-1, 1, 1, 1})).clamp(0, 255).to(torch::kUInt8);
  for (int i = 0; i < 10; ++i) d.class_names.push_back(std::to_string(i));
  return d;
}

}  // namespace flipguard::synthetic
