// Fuzz target: data set specifications as typed (parse_data_spec: NAME[:PATH][?resize=N&crop=M]).
#include <flipguard/data.hpp>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  flipguard::fuzz::expect_clean([&] { flipguard::parse_data_spec(text); });
  return 0;
}
