// Fuzz target: the checkpoint of a campaign (inject --resume): load_checkpoint, then the partial
// counts of an image-major run, as run_campaign reads them for a campaign over 1,000 images.
// When the input is a JSON object, the first byte decides whether its "crc32" is recomputed
// (bit 0 set) so that mutations reach the checks behind the checksum, and the campaign's
// fingerprint and size are taken from the checkpoint itself (bit 1 clear) or left empty.
#include <nlohmann/json.hpp>

#include "fault/checkpoint.hpp"
#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using nlohmann::json;
  namespace ck = flipguard::checkpoint_detail;
  flipguard::fuzz::Parts parts(data, size);
  const uint8_t choice = parts.byte();
  std::string text(parts.rest());
  json fingerprint = json::object();
  int64_t sets = 0;
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    json k = j;
    if (choice & 1) k["crc32"] = ck::checkpoint_crc(k);
    if (!(choice & 2)) {
      if (k.contains("fingerprint")) fingerprint = k["fingerprint"];
      if (k.contains("failures") && k["failures"].is_array())
        sets = static_cast<int64_t>(k["failures"].size());
    }
    text = k.dump();
  }
  const std::string path = flipguard::fuzz::write_input("checkpoint.json", text);
  flipguard::fuzz::expect_clean([&] {
    const int64_t images = 1000;
    ck::Checkpoint c = ck::load_checkpoint(path, fingerprint, sets, images);
    std::vector<int64_t> counts;
    for (int64_t f : c.failures)
      if (f < 0) counts.push_back(0);
    ck::partial_counts(c.partial, path, images, counts);
  });
  return 0;
}
