#pragma once
/// \file
/// The model zoo: the networks of Table I of the paper and their architecture-optimized forms
/// (section V-E1), with freshly initialized weights.
#include <flipguard/network.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace flipguard {

/// Known architecture names: mnist-cnn, mnist-cnn-opt, cifar-cnn, cifar-cnn-opt.
const std::vector<std::string>& zoo_names();

/// One-line description of an architecture.
std::string zoo_description(const std::string& arch);

/// Builds an architecture with Kaiming-uniform initialized weights drawn from `seed`; the input
/// pre-processing is the standard one of the data set it is meant for. Throws Error listing the
/// known names for an unknown one.
Network build_zoo(const std::string& arch, uint64_t seed = 0);

}  // namespace flipguard
