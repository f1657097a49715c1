// Fuzz target: the results of an exhaustive campaign read back (read_campaign: analyze
// --campaign, the study's report): summary.json and rates_siteK.npy or .csv, on the network of
// tiny_network.hpp. The first byte chooses the rates' format (bit 0: CSV, else .npy), the site
// (bit 1: site 1, else 0) and whether summary.json is there (bit 2 clear); then two parts
// (fuzz.hpp's Parts): summary.json, the rates file.
#include <flipguard/campaign.hpp>

#include "fuzz.hpp"
#include "tiny_network.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const flipguard::Network net = flipguard::fuzz::tiny_network();
  flipguard::fuzz::Parts parts(data, size);
  const uint8_t choice = parts.byte();
  const std::string_view summary = parts.next();
  const std::filesystem::path dir = flipguard::fuzz::work_dir() / "campaign";
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (!(choice & 4)) flipguard::fuzz::write_input("campaign/summary.json", summary);
  const std::string rates = std::string("campaign/rates_site") + (choice & 2 ? "1" : "0") +
                            (choice & 1 ? ".csv" : ".npy");
  flipguard::fuzz::write_input(rates, parts.rest());
  flipguard::fuzz::expect_clean([&] { flipguard::read_campaign(dir.string(), net); });
  return 0;
}
