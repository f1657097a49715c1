// flipguard analyze: resilience estimation by layer-wise relevance propagation (section III), and
// how well it ranks the failure rates of an exhaustive campaign.
#include "cli.hpp"

#include <flipguard/error.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

namespace flipguard::cli {

namespace {

using nlohmann::json;

struct AnalyzeArgs {
  std::string model, data, out, baseline, input_rule = "auto";
  std::vector<std::string> campaigns;
  int64_t images = 1000, batch = 100, top_k = 10;
};

std::vector<double> values(const torch::Tensor& t) {
  const auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

/// A number for JSON; NaN (undefined) becomes null.
json number(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

std::string label(int site) { return "site" + std::to_string(site); }

json names(const Network& net, const std::vector<int>& blocks) {
  json j = json::array();
  for (int b : blocks) j.push_back(net.blocks[b].name);
  return j;
}

json validation_json(const SiteValidation& v, int64_t features) {
  json j = {{"spearman_eta_mean_rate", number(v.spearman_mean)},
            {"spearman_eta_max_rate", number(v.spearman_max)},
            {"spearman_rho_mean_rate", number(v.spearman_rho_mean)},
            {"top_k", v.k},
            {"overlap_mean_rate", v.overlap_mean},
            {"overlap_max_rate", v.overlap_max},
            {"chance_overlap", static_cast<double>(v.k * v.k) / static_cast<double>(features)},
            {"sd_normalized_mean_rate", number(v.sd_mean_rate)},
            {"sd_normalized_max_rate", number(v.sd_max_rate)},
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
            {"label", label(s.block)},
            {"shape", {shape.c, shape.h, shape.w}},
            {"readers", names(net, s.readers)},
            {"criticality_from", names(net, s.weighted)},
            {"relevance_total", mean_relevance.sum().item<double>()},
            {"relevance_file", "relevance_" + label(s.block) + ".npy"},
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
  j["sd_normalized_eta"] = number(normalized_sd(s.eta));
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
    se.title = label(s.block) + " " + net.blocks[s.block].name;
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
    se.title = label(b) + " " + net.blocks[b].name;
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
      csv.rows.push_back({label(s.block), net.blocks[s.block].name, std::to_string(c),
                          format_number(rho[c]), format_number(eta[c]),
                          format_number(mean > 0 ? eta[c] / mean : NAN),
                          rank[c] ? std::to_string(rank[c]) : "",
                          v ? format_number(v->rates.mean[c]) : "",
                          v ? format_number(v->rates.max[c]) : ""});
  }
  return csv;
}

void write_relevance(const std::filesystem::path& dir, const std::string& name,
                     const torch::Tensor& t) {
  write_npy((dir / ("relevance_" + name + ".npy")).string(), values(t),
            std::vector<int64_t>(t.sizes().begin(), t.sizes().end()));
}

void print_site(const Network& net, const Shape& shape, const SiteCriticality& s,
                const torch::Tensor& mean_relevance, const SiteValidation* v) {
  std::printf("  %-6s %-8s %-9s relevance %.4f", label(s.block).c_str(),
              net.blocks[s.block].name.c_str(), shape.str().c_str(),
              mean_relevance.sum().item<double>());
  if (s.eta.defined()) {
    const auto top = top_k(values(s.eta), 5);
    std::string t;
    for (int64_t c : top) t += (t.empty() ? "" : ",") + std::to_string(c);
    std::printf("  SD(eta/mean) %.3f  top features %s", normalized_sd(s.eta), t.c_str());
  }
  std::printf("\n");
  if (v)
    std::printf(
        "         Spearman(eta, mean rate) %s  (eta, max rate) %s  (rho, mean rate) %s  "
        "top-%lld overlap %.2f (mean rate), %.2f (max rate), chance %.2f\n"
        "         measured spread SD(rate/mean) over features %s (mean rate), %s (max rate)\n",
        format_fixed(v->spearman_mean, 3).c_str(), format_fixed(v->spearman_max, 3).c_str(),
        format_fixed(v->spearman_rho_mean, 3).c_str(), (long long)v->k, v->overlap_mean,
        v->overlap_max, static_cast<double>(v->k * v->k) / shape.c,
        format_fixed(v->sd_mean_rate, 3).c_str(), format_fixed(v->sd_max_rate, 3).c_str());
}

/// What analyze computes, before anything is written.
struct Analysis {
  InputRule rule = InputRule::Auto;  ///< as resolved for the model
  MeanRelevance relevance;
  std::vector<SiteCriticality> sites;
  std::map<int, SiteValidation> checks;  ///< by site, with --campaign
  std::vector<int> unvalidated;          ///< sites with rates but no η
  std::map<int, FeatureChange> changes;  ///< by site, with --baseline
};

/// One site of the analysis that --baseline names: η and the measured rates of the model before.
struct BaselineSite {
  std::vector<double> eta;
  FeatureRates rates;
};

/// What --baseline reads: `flipguard analyze --campaign` results of the model before feature
/// optimization.
struct Baseline {
  std::string dir, model;
  std::map<int, BaselineSite> sites;  ///< the sites with campaign rates, by block
};

/// Reads DIR/criticality.json, written by analyze --campaign on a model of `net`'s architecture.
Baseline read_baseline(const std::string& dir, const Network& net) {
  const std::string path = (std::filesystem::path(dir) / "criticality.json").string();
  const char* expected = "expected the results directory of `flipguard analyze --campaign` on "
                         "the model before feature optimization";
  if (!std::filesystem::exists(path)) fail("--baseline: no criticality.json in '", dir, "': ", expected);
  json j;
  try {
    j = json::parse(std::ifstream(path));
  } catch (const json::exception& e) {
    fail("--baseline: '", path, "' is not valid JSON (", e.what(), "): ", expected);
  }
  Baseline b{dir, "", {}};
  const auto shapes = net.shapes();
  const auto sites = net.sites();
  try {
    b.model = j.at("model").get<std::string>();
    const std::string arch = j.at("arch").get<std::string>();
    if (arch != net.arch)
      fail("--baseline: '", path, "' analyzes a ", arch, " model: expected ", net.arch, ", the ",
           "architecture of --model");
    for (const auto& s : j.at("sites")) {
      if (!s.contains("validation")) continue;
      const int block = s.at("block").get<int>();
      if (std::find(sites.begin(), sites.end(), block) == sites.end())
        fail("--baseline: '", path, "' has a site at block ", block, ", which is no site of ",
             net.arch);
      BaselineSite site{s.at("eta").get<std::vector<double>>(),
                        {s.at("validation").at("mean_rate").get<std::vector<double>>(),
                         s.at("validation").at("max_rate").get<std::vector<double>>()}};
      if (static_cast<int64_t>(site.eta.size()) != shapes[block].c)
        fail("--baseline: '", path, "' lists ", site.eta.size(), " features for site ", block,
             ": expected ", shapes[block].c);
      b.sites[block] = std::move(site);
    }
  } catch (const json::exception& e) {
    fail("--baseline: '", path, "' is not an analysis of flipguard (", e.what(), "): ", expected);
  }
  if (b.sites.empty())
    fail("--baseline: '", path, "' has no site with campaign rates: ", expected);
  return b;
}

json change_json(const Network& net, int block, const FeatureChange& c) {
  return {{"site", label(block)},
          {"name", net.blocks[block].name},
          {"sd_normalized_eta_before", number(c.sd_eta)},
          {"spearman_eta_max_rate_before", number(c.spearman_eta_max)},
          {"sd_normalized_max_rate", {number(c.sd_max_rate_before), number(c.sd_max_rate_after)}},
          {"worst_rate", {c.worst_before, c.worst_after}},
          {"mean_rate", {c.mean_before, c.mean_after}},
          {"spearman_eta_rate_change", number(c.spearman_factor_change)},
          {"features_compared", c.compared},
          {"features_worse", c.features_worse}};
}

void print_changes(const Network& net, const Baseline& b, const std::map<int, FeatureChange>& changes) {
  std::printf("before -> after feature optimization, against the analysis in %s (model %s);\n"
              "eta and its Spearman correlations are of the model before:\n"
              "  %-15s %-13s %-24s %-20s %-20s %-20s %-27s %s\n",
              b.dir.c_str(), b.model.c_str(), "site", "SD(eta/mean)", "Spearman(eta, max rate)",
              "spread of max rates", "worst neuron", "mean rate", "Spearman(eta, rate change)",
              "features worse");
  for (const auto& [block, c] : changes) {
    char worst[48], mean[48], spread[40];
    std::snprintf(worst, sizeof worst, "%.2f %% -> %.2f %%", 100 * c.worst_before,
                  100 * c.worst_after);
    std::snprintf(mean, sizeof mean, "%.3f %% -> %.3f %%", 100 * c.mean_before, 100 * c.mean_after);
    std::snprintf(spread, sizeof spread, "%s -> %s", format_fixed(c.sd_max_rate_before, 3).c_str(),
                  format_fixed(c.sd_max_rate_after, 3).c_str());
    std::printf("  %-6s %-8s %-13s %-24s %-20s %-20s %-20s %-27s %lld of %lld\n",
                label(block).c_str(), net.blocks[block].name.c_str(),
                format_fixed(c.sd_eta, 3).c_str(), format_fixed(c.spearman_eta_max, 3).c_str(),
                spread, worst, mean, format_fixed(c.spearman_factor_change, 3).c_str(),
                (long long)c.features_worse, (long long)c.features);
  }
}

/// The mean over the sites with η of SD(η / mean(η)): Fig. 5b's value. NaN without any.
double mean_normalized_sd(const std::vector<SiteCriticality>& sites) {
  double sum = 0;
  int count = 0;
  for (const auto& s : sites) {
    const double sd = s.eta.defined() ? normalized_sd(s.eta) : NAN;
    if (std::isnan(sd)) continue;
    sum += sd;
    ++count;
  }
  return count ? sum / count : NAN;
}

json criticality_json(const AnalyzeArgs& a, const Network& net, const std::string& data,
                      const Analysis& an) {
  const MeanRelevance& r = an.relevance;
  json out = {{"model", a.model},
              {"arch", net.arch},
              {"data", data},
              {"split", "train"},
              {"images", r.images},
              {"batch", a.batch},
              {"input_rule", to_string(an.rule)},
              {"command", command_line()},
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
  out["mean_sd_normalized_eta"] = number(mean_normalized_sd(an.sites));
  if (!a.campaigns.empty()) {
    out["campaign"] = {{"dirs", a.campaigns}, {"top_k", a.top_k}};
    for (int b : an.unvalidated) out["campaign"]["unvalidated"].push_back(label(b));
  }
  if (!an.changes.empty()) {
    json sites = json::array();
    for (const auto& [block, c] : an.changes) sites.push_back(change_json(net, block, c));
    out["baseline"] = {{"dir", a.baseline}, {"sites", sites}};
  }
  return out;
}

/// Writes every file of --out (each atomically); `out` is completed with the figures' names and
/// written last.
void write_results(const std::string& out_dir, const Network& net, const Analysis& an, json out) {
  namespace fs = std::filesystem;
  fs::create_directories(out_dir);
  const fs::path dir(out_dir);
  write_relevance(dir, "input", an.relevance.input);
  for (const auto& s : an.sites) write_relevance(dir, label(s.block), an.relevance.blocks[s.block]);
  write_csv((dir / "criticality.csv").string(), criticality_table(net, an.sites, an.checks));
  std::string why = render_plot(criticality_plot(net, an.sites), (dir / "criticality.gp").string(),
                                (dir / "criticality.svg").string());
  if (why.empty()) out["figure"] = "criticality.svg";
  else log("warning: criticality.svg not rendered: " + why);
  if (!an.checks.empty()) {
    why = render_plot(validation_plot(net, an.sites, an.checks), (dir / "validation.gp").string(),
                      (dir / "validation.svg").string());
    if (why.empty()) out["campaign"]["figure"] = "validation.svg";
    else log("warning: validation.svg not rendered: " + why);
  }
  write_json((dir / "criticality.json").string(), out);
}

void print_analysis(const Network& net, const std::string& data, const Analysis& an,
                    double seconds) {
  std::printf("%s: relevance over %lld %s training images (input rule %s) in %s; "
              "input relevance %.4f\n",
              net.arch.c_str(), (long long)an.relevance.images, data.c_str(),
              to_string(an.rule).c_str(), format_duration(seconds).c_str(),
              an.relevance.input.sum().item<double>());
  const auto shapes = net.shapes();
  for (const auto& s : an.sites)
    print_site(net, shapes[s.block], s, an.relevance.blocks[s.block],
               an.checks.count(s.block) ? &an.checks.at(s.block) : nullptr);
  const double sd = mean_normalized_sd(an.sites);
  if (!std::isnan(sd)) std::printf("  mean SD of normalized criticality (Fig. 5b): %.4f\n", sd);
}

void run_analyze(const AnalyzeArgs& a) {
  const auto start = std::chrono::steady_clock::now();
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"--images", a.images},
                                    {"--batch", a.batch},
                                    {"--top-k", a.top_k}})
    if (value < 1) fail(name, " ", value, ": expected a positive number");
  RelevanceOptions o;
  o.input_rule = parse_input_rule(a.input_rule);
  o.batch = a.batch;
  const Model m = load_model(a.model);
  if (!m.quant)
    fail("model '", a.model, "' is not quantized: run `flipguard quantize` on it first");
  // Read the campaigns and the baseline before the data and the long part, so that a wrong
  // directory fails at once.
  std::map<int, torch::Tensor> rates;
  if (!a.campaigns.empty()) rates = read_campaign_rates(a.campaigns, m.net);
  Baseline baseline;
  if (!a.baseline.empty()) {
    baseline = read_baseline(a.baseline, m.net);
    if (std::none_of(rates.begin(), rates.end(),
                     [&](const auto& r) { return baseline.sites.count(r.first) > 0; }))
      fail("--baseline: no site has campaign rates in both '", a.baseline, "' and --campaign ",
           join(a.campaigns), ": expected the two models' campaigns to cover a site in common");
  }
  const DataSpec spec = parse_data_spec(a.data);
  const Dataset train = load_dataset(spec, Split::Train).head(a.images);
  check_images(m.net, train.images, train.name);
  const QuantizedNetwork q(m.net, *m.quant);

  Analysis an;
  an.rule = resolve_input_rule(q, o.input_rule);
  log("relevance of " + m.net.arch + " on the first " + std::to_string(train.size()) + " " +
      spec.name + " training images (input rule " + to_string(an.rule) + ")");
  an.relevance = mean_relevance(q, train.images, train.labels, o);
  an.sites = site_criticality(q, an.relevance);
  for (const auto& [b, rt] : rates) {
    const auto& s = an.sites[b];
    if (s.eta.defined()) an.checks[b] = validate_site(s.eta, s.rho, rt, a.top_k);
    else an.unvalidated.push_back(b);
  }
  for (const auto& [b, v] : an.checks)
    if (baseline.sites.count(b))
      an.changes[b] = feature_change(baseline.sites[b].eta, baseline.sites[b].rates, v.rates);
  json out = criticality_json(a, q.network(), spec.name, an);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out["seconds"] = seconds;
  write_results(a.out, q.network(), an, out);
  print_analysis(q.network(), spec.name, an, seconds);
  if (!an.changes.empty()) print_changes(q.network(), baseline, an.changes);
  std::printf("results in %s\n", a.out.c_str());
}

}  // namespace

void add_analyze(CLI::App& app, Action& action) {
  auto a = std::make_shared<AnalyzeArgs>();
  auto* cmd = app.add_subcommand(
      "analyze",
      "feature relevance and bit-flip criticality by relevance propagation (section III)");
  cmd->add_option("--model", a->model, "quantized model file")->required();
  cmd->add_option("--data", a->data, "data set NAME[:PATH] (training images: the set D)")
      ->required()
      ->check(data_validator());
  cmd->add_option("--out", a->out, "results directory")->required();
  cmd->add_option("--images", a->images, "|D|: the first N training images")->capture_default_str();
  cmd->add_option("--batch", a->batch, "images propagated at once")->capture_default_str();
  cmd->add_option("--input-rule", a->input_rule,
                  "rule of the layers that read the network input: " + join(input_rule_names()))
      ->check(CLI::IsMember(input_rule_names()))
      ->capture_default_str();
  auto* campaign = cmd->add_option(
      "--campaign", a->campaigns,
      "results directory of an exhaustive campaign (flipguard inject) to compare with; several "
      "for a campaign split by --sites (each site from the one that holds it)");
  cmd->add_option("--baseline", a->baseline,
                  "results directory of `analyze --campaign` on the model before feature "
                  "optimization: per site, how the measured rates changed and how the change "
                  "follows eq. 6")
      ->needs(campaign);
  cmd->add_option("--top-k", a->top_k, "features compared by top-k overlap")->capture_default_str();
  cmd->callback([&action, a] { action = [a] { run_analyze(*a); }; });
}

}  // namespace flipguard::cli
