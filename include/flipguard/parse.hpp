#pragma once
/// \file
/// Numbers read from text that users write (option values, CSV cells, data set options): the
/// whole text must be the number, or there is none.
#include <cstdint>
#include <optional>
#include <string>

namespace flipguard {

/// The integer that `text` is in full ("12", "-3"); nothing for "", "1.5", "12x" or one outside
/// int64_t.
std::optional<int64_t> parse_integer(const std::string& text);

/// The finite number that `text` is in full ("0.5", "1e-3"); nothing for "", "nan", "1x".
std::optional<double> parse_number(const std::string& text);

}  // namespace flipguard
