// report.html of `flipguard reproduce`: the study's tables and figures in one HTML file that
// needs no network to view.
#include <flipguard/io.hpp>
#include <flipguard/report.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace flipguard {

namespace fs = std::filesystem;
using nlohmann::json;

std::string percent(const json& v) {
  if (!v.is_number()) return "–";
  char b[32];
  std::snprintf(b, sizeof b, "%.2f %%", 100 * v.get<double>());
  return b;
}

namespace {

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
  }
  return o;
}

}  // namespace

std::string study_report_html(const json& r, const std::string& directory) {
  const fs::path dir(directory);
  const std::string base = r["base"].get<std::string>();
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>flipguard study: "
    << html_escape(r["benchmark"].get<std::string>()) << "</title>\n<style>body{font-family:sans-serif;"
    << "max-width:1000px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #999;"
    << "padding:3px 8px;text-align:right}th{background:#eee}figure{margin:1em 0}"
    << "code{font-size:85%}</style></head><body>\n";
  h << "<h1>Bit-flip resilience study: " << html_escape(r["benchmark"].get<std::string>())
    << "</h1>\n<p>Reference model <code>" << html_escape(r["reference_model"].get<std::string>())
    << "</code>. Single-MSB campaigns " << html_escape(r["exhaustive_scope"].get<std::string>())
    << " on " << r["exhaustive"]["original"]["images"] << " test images; bit error rates on "
    << r["ber"]["images"] << " test images, " << r["ber"]["runs"] << " runs a rate.</p>\n";
  if (r.contains("limitation"))
    h << "<p><b>Limitation:</b> " << html_escape(r["limitation"].get<std::string>()) << "</p>\n";
  h << "<h2>Models and failure rates</h2>\n<table><tr><th>model</th><th>8-bit accuracy</th>"
       "<th>float accuracy</th><th>worst case</th><th>mean</th></tr>\n";
  for (const auto& st : r["stages"]) {
    const std::string s = st["key"].get<std::string>();
    h << "<tr><td style=\"text-align:left\">" << html_escape(st["title"].get<std::string>())
      << "</td><td>" << percent(r["models"][s]["quantized_accuracy"]) << "</td><td>"
      << percent(r["models"][s]["float_accuracy"]) << "</td><td>"
      << percent(r["exhaustive"][s]["worst_case"]) << "</td><td>" << percent(r["exhaustive"][s]["mean"])
      << "</td></tr>\n";
  }
  h << "</table>\n<table><tr><th>optimization</th><th>worst-case reduction</th><th>mean "
       "reduction</th></tr>\n";
  for (const char* k : {"architecture_optimization", "feature_optimization", "range_restriction",
                        "features_and_ranges"})
    if (r.contains(k))
      h << "<tr><td style=\"text-align:left\">" << k << "</td><td>"
        << percent(r[k]["worst_case_reduction"]) << "</td><td>" << percent(r[k]["mean_reduction"])
        << "</td></tr>\n";
  h << "</table>\n<p>Feature optimization: " << r["feature_optimization"]["iterations"]
    << " iterations; float baseline " << percent(r["feature_optimization"]["float_baseline"])
    << ", 8-bit accuracy after the last adjustment "
    << percent(r["models"]["features"]["quantized_accuracy"]) << " ("
    << (r["feature_optimization"]["reached_baseline"].get<bool>() ? "at least" : "below")
    << " the baseline).</p>\n";
  if (r["feature_optimization"].contains("sites")) {
    // Eq. 6 equalizes within a site: the measured spread over the features shows where it did.
    auto spread = [](const json& v) {
      return v.is_number() ? format_fixed(v.get<double>(), 3) : std::string("–");
    };
    h << "<table><tr><th>site</th><th>worst case before / after</th><th>mean before / after</th>"
         "<th>SD(rate/mean) of the features' largest rates, before / after</th></tr>\n";
    for (const auto& site : r["feature_optimization"]["sites"])
      h << "<tr><td style=\"text-align:left\">" << html_escape(site["site"].get<std::string>()) << " "
        << html_escape(site["name"].get<std::string>()) << "</td><td>"
        << percent(site["worst_case"][0]) << " / " << percent(site["worst_case"][1]) << "</td><td>"
        << percent(site["mean"][0]) << " / " << percent(site["mean"][1]) << "</td><td>"
        << spread(site["feature_spread"][0]) << " / " << spread(site["feature_spread"][1])
        << "</td></tr>\n";
    h << "</table>\n";
  }
  h << "<h2>Bit error rates</h2>\n<table><tr><th>BER</th>";
  for (const auto& st : r["stages"]) h << "<th>" << html_escape(st["title"].get<std::string>()) << "</th>";
  h << "<th>reduction, optimized vs original</th></tr>\n";
  const auto& ber = r["ber"];
  for (size_t i = 0; i < ber["rates"].size(); ++i) {
    h << "<tr><td>" << ber["rates"][i].get<double>() << "</td>";
    for (const auto& st : r["stages"]) h << "<td>" << percent(ber[st["key"].get<std::string>()][i]) << "</td>";
    h << "<td>" << percent(ber["relative_reduction"]["features_vs_original"][i]) << "</td></tr>\n";
  }
  h << "</table>\n<p>Mean relative reduction over the rates, feature-optimized vs original: "
    << percent(ber["mean_relative_reduction"]["features_vs_original"]) << " (the paper: 29 % on "
    << "MNIST, 27 % on CIFAR-10, 15 % on ILSVRC); range restriction vs " << base << ": "
    << percent(ber["mean_relative_reduction"]["ranges_vs_" + base])
    << "; feature optimization and ranges vs " << base << ": "
    << percent(ber["mean_relative_reduction"]["features_ranges_vs_" + base])
    << ".</p>\n<h2>Figures</h2>\n";
  for (const auto& [key, file] : r["figures"].items()) {
    const fs::path p = dir / file.get<std::string>();
    if (!fs::exists(p)) continue;
    h << "<figure>" << read_file(p.string(), "figure") << "<figcaption>" << html_escape(key) << " ("
      << html_escape(file.get<std::string>()) << ")</figcaption></figure>\n";
  }
  h << "<h2>Commands</h2>\n<ol>\n";
  for (const auto& c : r["commands"])
    h << "<li>" << html_escape(c["stage"].get<std::string>()) << ": <code>"
      << html_escape(c["command"].get<std::string>()) << "</code></li>\n";
  h << "</ol>\n</body></html>\n";
  return h.str();
}


}  // namespace flipguard
