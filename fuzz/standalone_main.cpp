// Runs a fuzz target on the files given (folders: every file inside, sorted), without libFuzzer:
// how the default build replays the seed corpus and every input that once crashed as regression
// tests (ctest Fuzz.*), with any compiler, under the sanitizers when the build has them.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path p = argv[i];
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "%s: no such file or folder\n", p.c_str());
      return 2;
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "no inputs: expected files or folders of inputs to replay\n");
    return 2;
  }
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    const std::string& refusal = flipguard::fuzz::last_refusal();
    std::printf("%s (%zu bytes): %s\n", f.c_str(), bytes.size(),
                refusal.empty() ? "read" : ("refused: " + refusal).c_str());
  }
  std::printf("%zu inputs replayed, none crashed\n", files.size());
  return 0;
}
