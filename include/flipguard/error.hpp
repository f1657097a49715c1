#pragma once
/// \file
/// flipguard's one exception type. Messages say what failed, the offending value and what was
/// expected; the CLI prints them as one line on stderr and exits non-zero.
#include <sstream>
#include <stdexcept>
#include <string>

namespace flipguard {

/// Invalid input (a bad file, option or value) or an unsupported request.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

/// Throws Error with the concatenation of its arguments as the message.
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(os.str());
}

/// The names joined by `sep`, for messages that list the valid choices.
template <typename Names>
std::string join(const Names& names, const std::string& sep = ", ") {
  std::ostringstream os;
  bool first = true;
  for (const auto& n : names) {
    if (!first) os << sep;
    os << n;
    first = false;
  }
  return os.str();
}

}  // namespace flipguard
