// The analysis of a model (section III): mean relevance, criticality, its validation against
// exhaustive campaigns and the change against an earlier analysis, and the files that hold them.
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>
#include <flipguard/version.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace flipguard {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::vector<double> values(const torch::Tensor& t) {
  const auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

/// A number for JSON; NaN (undefined) becomes null.

json names(const Network& net, const std::vector<int>& blocks) {
  json j = json::array();
  for (int b : blocks) j.push_back(net.blocks[b].name);
  return j;
}

json validation_json(const SiteValidation& v, int64_t features) {
  json j = {{"spearman_eta_mean_rate", json_number(v.spearman_mean)},
            {"spearman_eta_max_rate", json_number(v.spearman_max)},
            {"spearman_rho_mean_rate", json_number(v.spearman_rho_mean)},
            {"top_k", v.k},
            {"overlap_mean_rate", v.overlap_mean},
            {"overlap_max_rate", v.overlap_max},
            {"chance_overlap", static_cast<double>(v.k * v.k) / static_cast<double>(features)},
            {"sd_normalized_mean_rate", json_number(v.sd_mean_rate)},
            {"sd_normalized_max_rate", json_number(v.sd_max_rate)},
            {"mean_rate", v.rates.mean},
            {"max_rate", v.rates.max}};
  if (std::isnan(v.spearman_mean))
    j["note"] = "the failure rates of this site are constant: no rank correlation";
  return j;
}

/// One site's entry of criticality.json.
json site_json(const Network& net, const Shape& shape, const SiteCriticality& s,
               const torch::Tensor& mean_relevance) {
  json j = {{"block", s.block},
            {"name", net.blocks[s.block].name},
            {"label", site_label(s.block)},
            {"shape", {shape.c, shape.h, shape.w}},
            {"readers", names(net, s.readers)},
            {"criticality_from", names(net, s.weighted)},
            {"relevance_total", mean_relevance.sum().item<double>()},
            {"relevance_file", "relevance_" + site_label(s.block) + ".npy"},
            {"rho", values(s.rho)}};
  if (!s.eta.defined()) {
    j["eta"] = nullptr;
    j["note"] = "no weighted block reads this site, directly or through pooling or concatenation";
    return j;
  }
  const auto eta = values(s.eta);
  j["eta"] = eta;
  const double mean = s.eta.mean().item<double>();
  j["eta_normalized"] = mean > 0 ? json(values(s.eta / mean)) : json(nullptr);
  j["ranking"] = top_k(eta, static_cast<int64_t>(eta.size()));
  j["sd_normalized_eta"] = json_number(normalized_sd(s.eta));
  return j;
}

/// Fig. 5b's view of one network: each site's normalized criticality, features ranked.
Plot criticality_plot(const Network& net, const std::vector<SiteCriticality>& sites) {
  Plot p;
  p.title = "Feature bit-flip criticality (eq. 5), features ranked";
  p.xlabel = "feature rank";
  p.ylabel = "criticality / mean criticality";
  for (const auto& s : sites) {
    if (!s.eta.defined() || !(s.eta.mean().item<double>() > 0)) continue;
    Series se;
    se.title = site_label(s.block) + " " + net.blocks[s.block].name;
    se.style = "linespoints";
    auto e = values(s.eta / s.eta.mean());
    std::sort(e.rbegin(), e.rend());
    for (size_t i = 0; i < e.size(); ++i) {
      se.x.push_back(static_cast<double>(i + 1));
      se.y.push_back(e[i]);
    }
    p.series.push_back(se);
  }
  return p;
}

/// Estimated criticality against the measured mean failure rate, one point per feature.
Plot validation_plot(const Network& net, const std::vector<SiteCriticality>& sites,
                     const std::map<int, SiteValidation>& v) {
  Plot p;
  p.title = "Criticality (eq. 5) against measured failure rates";
  p.xlabel = "criticality / mean criticality";
  p.ylabel = "mean failure rate of the feature's neurons (%)";
  for (const auto& [b, val] : v) {
    const auto& s = sites[b];
    if (!s.eta.defined() || !(s.eta.mean().item<double>() > 0)) continue;
    Series se;
    se.title = site_label(b) + " " + net.blocks[b].name;
    se.style = "points";
    se.x = values(s.eta / s.eta.mean());
    for (double r : val.rates.mean) se.y.push_back(100 * r);
    p.series.push_back(se);
  }
  return p;
}

/// criticality.csv: one row per feature of every site.
CsvTable criticality_table(const Network& net, const std::vector<SiteCriticality>& sites,
                           const std::map<int, SiteValidation>& checks) {
  CsvTable csv;
  csv.header = {"site", "name", "feature", "rho", "eta", "eta_normalized", "rank", "mean_rate",
                "max_rate"};
  for (const auto& s : sites) {
    const auto rho = values(s.rho);
    const auto eta = s.eta.defined() ? values(s.eta) : std::vector<double>(rho.size(), NAN);
    const double mean = s.eta.defined() ? s.eta.mean().item<double>() : NAN;
    std::vector<int64_t> rank(rho.size(), 0);
    if (s.eta.defined()) {
      const auto order = top_k(eta, static_cast<int64_t>(eta.size()));
      for (size_t i = 0; i < order.size(); ++i) rank[order[i]] = static_cast<int64_t>(i + 1);
    }
    const SiteValidation* v = checks.count(s.block) ? &checks.at(s.block) : nullptr;
    for (size_t c = 0; c < rho.size(); ++c)
      csv.rows.push_back({site_label(s.block), net.blocks[s.block].name, std::to_string(c),
                          format_number(rho[c]), format_number(eta[c]),
                          format_number(mean > 0 ? eta[c] / mean : NAN),
                          rank[c] ? std::to_string(rank[c]) : "",
                          v ? format_number(v->rates.mean[c]) : "",
                          v ? format_number(v->rates.max[c]) : ""});
  }
  return csv;
}

void write_relevance(const fs::path& dir, const std::string& name, const torch::Tensor& t) {
  write_npy((dir / ("relevance_" + name + ".npy")).string(), values(t),
            std::vector<int64_t>(t.sizes().begin(), t.sizes().end()));
}

json change_json(const Network& net, int block, const FeatureChange& c) {
  return {{"site", site_label(block)},
          {"name", net.blocks[block].name},
          {"sd_normalized_eta_before", json_number(c.sd_eta)},
          {"spearman_eta_max_rate_before", json_number(c.spearman_eta_max)},
          {"sd_normalized_max_rate", {json_number(c.sd_max_rate_before), json_number(c.sd_max_rate_after)}},
          {"worst_rate", {c.worst_before, c.worst_after}},
          {"mean_rate", {c.mean_before, c.mean_after}},
          {"spearman_eta_rate_change", json_number(c.spearman_factor_change)},
          {"features_compared", c.compared},
          {"features_worse", c.features_worse}};
}

json criticality_json(const AnalysisOptions& o, const Analysis& an) {
  const MeanRelevance& r = an.relevance;
  const Network& net = an.net;
  json out = {{"model", o.model},
              {"arch", net.arch},
              {"data", an.data},
              {"split", "train"},
              {"images", r.images},
              {"batch", o.relevance.batch},
              {"input_rule", to_string(an.rule)},
              {"command", o.command},
              {"flipguard", build_info()},
              {"input",
               {{"relevance_total", r.input.sum().item<double>()},
                {"relevance_file", "relevance_input.npy"}}}};
  const auto shapes = net.shapes();
  json sites = json::array();
  for (const auto& s : an.sites) {
    json site = site_json(net, shapes[s.block], s, r.blocks[s.block]);
    if (an.checks.count(s.block))
      site["validation"] = validation_json(an.checks.at(s.block), shapes[s.block].c);
    sites.push_back(site);
  }
  out["sites"] = sites;
  out["mean_sd_normalized_eta"] = json_number(an.mean_sd());
  if (!o.campaigns.empty()) {
    out["campaign"] = {{"dirs", o.campaigns}, {"top_k", o.top_k}};
    for (int b : an.unvalidated) out["campaign"]["unvalidated"].push_back(site_label(b));
  }
  if (!an.changes.empty()) {
    json sites = json::array();
    for (const auto& [block, c] : an.changes) sites.push_back(change_json(net, block, c));
    out["baseline"] = {{"dir", o.baseline}, {"sites", sites}};
  }
  return out;
}

/// Writes every file of `out_dir` (each atomically); `out` is completed with the figures' names
/// and written last.
void write_results(const std::string& out_dir, const Analysis& an, json out,
                   const std::function<void(const std::string&)>& log) {
  fs::create_directories(out_dir);
  const fs::path dir(out_dir);
  const Network& net = an.net;
  write_relevance(dir, "input", an.relevance.input);
  for (const auto& s : an.sites)
    write_relevance(dir, site_label(s.block), an.relevance.blocks[s.block]);
  write_csv((dir / "criticality.csv").string(), criticality_table(net, an.sites, an.checks));
  std::string why = render_plot(criticality_plot(net, an.sites), (dir / "criticality.gp").string(),
                                (dir / "criticality.svg").string());
  if (why.empty()) out["figure"] = "criticality.svg";
  else if (log) log("warning: criticality.svg not rendered: " + why);
  if (!an.checks.empty()) {
    why = render_plot(validation_plot(net, an.sites, an.checks), (dir / "validation.gp").string(),
                      (dir / "validation.svg").string());
    if (why.empty()) out["campaign"]["figure"] = "validation.svg";
    else if (log) log("warning: validation.svg not rendered: " + why);
  }
  write_json((dir / "criticality.json").string(), out);
}

}  // namespace

std::string site_label(int block) { return "site" + std::to_string(block); }

double Analysis::mean_sd() const {
  std::vector<torch::Tensor> etas;
  for (const auto& s : sites) etas.push_back(s.eta);
  return mean_normalized_sd(etas);
}

Baseline read_baseline(const std::string& dir, const Network& net) {
  const std::string path = (fs::path(dir) / "criticality.json").string();
  const char* expected = "expected the results directory of an analysis with campaigns of the "
                         "model before feature optimization";
  if (!fs::exists(path)) fail("baseline: no criticality.json in '", dir, "': ", expected);
  const json j = read_json(path, "baseline criticality file");
  Baseline b{dir, "", {}};
  const auto shapes = net.shapes();
  const auto sites = net.sites();
  try {
    b.model = j.at("model").get<std::string>();
    const std::string arch = j.at("arch").get<std::string>();
    if (arch != net.arch)
      fail("baseline: '", path, "' analyzes a ", arch, " model: expected ", net.arch, ", the ",
           "architecture of the model analyzed");
    for (const auto& s : j.at("sites")) {
      if (!s.contains("validation")) continue;
      const int block = s.at("block").get<int>();
      if (std::find(sites.begin(), sites.end(), block) == sites.end())
        fail("baseline: '", path, "' has a site at block ", block, ", which is no site of ",
             net.arch);
      BaselineSite site{s.at("eta").get<std::vector<double>>(),
                        {s.at("validation").at("mean_rate").get<std::vector<double>>(),
                         s.at("validation").at("max_rate").get<std::vector<double>>()}};
      if (static_cast<int64_t>(site.eta.size()) != shapes[block].c)
        fail("baseline: '", path, "' lists ", site.eta.size(), " features for site ", block,
             ": expected ", shapes[block].c);
      b.sites[block] = std::move(site);
    }
  } catch (const json::exception& e) {
    fail("baseline: '", path, "' is not an analysis of flipguard (", e.what(), "): ", expected);
  }
  if (b.sites.empty())
    fail("baseline: '", path, "' has no site with campaign rates: ", expected);
  return b;
}

Analysis analyze(const AnalysisOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"images", o.images},
                                    {"batch", o.relevance.batch},
                                    {"top_k", o.top_k}})
    if (value < 1) fail(name, " ", value, ": expected a positive number");
  const Model m = load_model(o.model);
  if (!m.quant) fail("model '", o.model, "' is not quantized: expected a quantized model");
  // Read the campaigns and the baseline before the data and the long part, so that a wrong
  // directory fails at once.
  std::map<int, torch::Tensor> rates;
  if (!o.campaigns.empty()) rates = read_campaign_rates(o.campaigns, m.net);
  Analysis an;
  if (!o.baseline.empty()) {
    if (o.campaigns.empty())
      fail("baseline '", o.baseline, "' without campaigns: expected the campaigns of the model ",
           "to compare with it");
    an.baseline = read_baseline(o.baseline, m.net);
    if (std::none_of(rates.begin(), rates.end(),
                     [&](const auto& r) { return an.baseline.sites.count(r.first) > 0; }))
      fail("baseline: no site has campaign rates in both '", o.baseline, "' and the campaigns ",
           join(o.campaigns), ": expected the two models' campaigns to cover a site in common");
  }
  const DataSpec spec = parse_data_spec(o.data);
  const Dataset train = load_dataset(spec, Split::Train).head(o.images);
  check_images(m.net, train.images, train.name);
  const QuantizedNetwork q(m.net, *m.quant);

  an.net = q.network();
  an.data = spec.name;
  an.rule = resolve_input_rule(q, o.relevance.input_rule);
  if (o.log)
    o.log("relevance of " + m.net.arch + " on the first " + std::to_string(train.size()) + " " +
          spec.name + " training images (input rule " + to_string(an.rule) + ")");
  an.relevance = mean_relevance(q, train.images, train.labels, o.relevance);
  an.sites = site_criticality(q, an.relevance);
  for (const auto& [b, rt] : rates) {
    const auto& s = an.sites[b];
    if (s.eta.defined()) an.checks[b] = validate_site(s.eta, s.rho, rt, o.top_k);
    else an.unvalidated.push_back(b);
  }
  for (const auto& [b, v] : an.checks)
    if (an.baseline.sites.count(b))
      an.changes[b] = feature_change(an.baseline.sites[b].eta, an.baseline.sites[b].rates, v.rates);
  json out = criticality_json(o, an);
  an.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out["seconds"] = an.seconds;
  write_results(o.out, an, out, o.log);
  return an;
}

}  // namespace flipguard
