#pragma once
/// \file
/// What this build of flipguard is: its version, the LibTorch it runs on, the vector
/// instructions its kernels use on this processor, and the git commit it was built from.
/// `flipguard --version` prints it; every summary.json records it (field "flipguard").
#include <nlohmann/json.hpp>

#include <string>

namespace flipguard {

/// {"version", "libtorch", "vector_instructions", "git_commit"} as strings.
nlohmann::json build_info();

/// build_info() as the lines `flipguard --version` prints.
std::string build_info_text();

}  // namespace flipguard
