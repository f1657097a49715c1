// What the CLI prints of a campaign's summary.json: one line for the campaign, then per site
// (exhaustive), the estimate (sampled) or per bit error rate (ber).
#include "cli.hpp"

#include <flipguard/report.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>

namespace flipguard::cli {

void print_campaign_summary(const nlohmann::json& s) {
  std::printf("%s campaign on %s (%s), %lld correct images of %lld, %lld fault sets in %s (%.0f evaluations/s)\n",
              s["campaign"].get<std::string>().c_str(), s["arch"].get<std::string>().c_str(),
              s["target"].get<std::string>().c_str(), (long long)s["images"].get<int64_t>(),
              (long long)s["golden"]["images"].get<int64_t>(),
              (long long)s["fault_sets"].get<int64_t>(),
              format_duration(s["wall_seconds"].get<double>()).c_str(),
              s["evaluations_per_second"].get<double>());
  // One line per site: its faults (counted under `count_key`), worst and mean rate.
  auto site_lines = [&](const char* count_key) {
    for (const auto& t : s["sites"])
      std::printf("  %-10s %-8s %6lld faults  worst %6.2f%%  mean %7.4f%%  nonzero %lld\n",
                  t["label"].get<std::string>().c_str(), t["name"].get<std::string>().c_str(),
                  (long long)t[count_key].get<int64_t>(), 100 * t["worst_case"].get<double>(),
                  100 * t["mean"].get<double>(), (long long)t["nonzero"].get<int64_t>());
  };
  if (s.contains("sites") && s["campaign"] == "exhaustive") {
    site_lines("faults");
    std::printf("  overall worst-case failure rate %.2f%%, mean %.4f%%\n",
                100 * s["overall"]["worst_case"].get<double>(), 100 * s["overall"]["mean"].get<double>());
  } else if (s["campaign"] == "sampled") {
    const auto& e = s["overall"]["estimate"];
    std::printf("  %lld faults sampled of %lld; mean failure rate %.4f%% (%.4f%% .. %.4f%%)\n",
                (long long)s["sample_size"].get<int64_t>(), (long long)s["population"].get<int64_t>(),
                100 * e["mean"].get<double>(), 100 * e.value("low", 0.0), 100 * e.value("high", 0.0));
  } else if (s["campaign"] == "list") {
    site_lines("count");
    std::printf("  %lld faults replayed; worst failure rate %.2f%%, mean %.4f%% (faults.csv)\n",
                (long long)s["overall"]["count"].get<int64_t>(),
                100 * s["overall"]["worst_case"].get<double>(), 100 * s["overall"]["mean"].get<double>());
  } else if (s["campaign"] == "ber") {
    for (const auto& r : s["ber"])
      std::printf("  BER %-8g %5.1f flips  mean failure rate %7.4f%%  worst %6.2f%%\n",
                  r["ber"].get<double>(), r["mean_flips"].get<double>(), 100 * r["mean"].get<double>(),
                  100 * r["worst"].get<double>());
  }
}

}  // namespace flipguard::cli
