// Running a study's stages and summarizing them: results.json, the comparisons of the models'
// campaigns, the figures and report.html.
#include <flipguard/campaign.hpp>
#include <flipguard/data.hpp>
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>
#include <flipguard/study.hpp>
#include <flipguard/version.hpp>


#include <cmath>
#include <filesystem>

namespace flipguard {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {


/// The failure rates of a model's exhaustive campaign (read_campaign).
struct CampaignRates {
  json summary;              ///< its summary.json
  std::vector<double> all;   ///< every rate, site after site (the evaluated neurons only)
  /// Per site label: SD(rate/mean) of the features' largest rates (feature_rates,
  /// normalized_sd), the measured counterpart of Fig. 5b that eq. 6 aims to lower (README.md,
  /// "Why the worst case rises in site 3"); NaN where a campaign limited to the most critical
  /// features left neurons unmeasured (NaN) or where nothing failed.
  std::map<std::string, double> feature_spread;
};

CampaignRates campaign_rates(const fs::path& dir, const Network& net) {
  CampaignResults r = read_campaign(dir.string(), net);
  if (r.summary.is_null()) fail("study: no summary.json in '", dir.string(), "'");
  CampaignRates c;
  c.summary = std::move(r.summary);
  for (const auto& [site, t] : r.rates) {
    bool complete = true;
    const auto flat = t.contiguous();
    const double* v = flat.data_ptr<double>();
    for (int64_t i = 0; i < flat.numel(); ++i) {
      if (std::isnan(v[i])) complete = false;
      else c.all.push_back(v[i]);
    }
    c.feature_spread[site_label(site)] =
        complete ? normalized_sd(torch::tensor(feature_rates(t).max, torch::kFloat64)) : std::nan("");
  }
  return c;
}

/// Site by site, two exhaustive campaigns of the same network (before and after feature
/// optimization): worst and mean failure rate and the features' spread (CampaignRates).
json site_comparison(const CampaignRates& before, const CampaignRates& after) {
  json out = json::array();
  for (const auto& s : before.summary.at("sites")) {
    const std::string label = s.at("label");
    for (const auto& t : after.summary.at("sites"))
      if (t.at("label") == label)
        out.push_back({{"site", label},
                       {"name", s.at("name")},
                       {"worst_case", {s.at("worst_case"), t.at("worst_case")}},
                       {"mean", {s.at("mean"), t.at("mean")}},
                       {"feature_spread", {json_number(before.feature_spread.at(label)),
                                           json_number(after.feature_spread.at(label))}}});
  }
  return out;
}

/// 1 - after / before: the relative reduction (NaN when before is 0).
double reduction(double before, double after) {
  return before > 0 ? 1.0 - after / before : std::nan("");
}

/// Fig. 3/4: the histograms of two campaigns on common bins, log counts.
Plot histogram_plot(const std::string& title, const std::vector<std::string>& names,
                    const std::vector<std::vector<double>>& rates, double width) {
  Plot p;
  p.title = title;
  p.xlabel = "failure rate (%)";
  p.ylabel = "neurons";
  p.logy = true;
  double worst = 0;
  for (const auto& r : rates)
    for (double v : r) worst = std::max(worst, v);
  const size_t shown = static_cast<size_t>(worst / width) + 1;
  for (size_t i = 0; i < rates.size(); ++i) {
    const auto h = rate_histogram(rates[i], width);
    Series s;
    s.title = names[i];
    s.style = "histeps";
    for (size_t k = 0; k < shown && k < h.size(); ++k) {
      s.x.push_back(100 * (k + 0.5) * width);
      s.y.push_back(static_cast<double>(h[k]));
    }
    p.series.push_back(s);
  }
  p.xmin = 0;
  p.xmax = 100 * shown * width;
  return p;
}

/// Fig. 7: every model's mean failure rate against the bit error rate.
Plot ber_plot(const StudyPlan& plan, const json& ber) {
  Plot fb;
  fb.title = "Failure rate under random bit flips (Fig. 7)";
  fb.xlabel = "bit error rate";
  fb.ylabel = "mean failure rate (%)";
  fb.logx = true;
  for (const auto& s : plan.models) {
    Series se;
    se.title = plan.title(s);
    se.style = "linespoints";
    for (size_t i = 0; i < ber["rates"].size(); ++i) {
      se.x.push_back(ber["rates"][i].get<double>());
      se.y.push_back(100 * ber[s][i].get<double>());
    }
    fb.series.push_back(se);
  }
  return fb;
}

/// The bit error rate campaigns of every model, and the relative reductions of pairs of them.
json ber_comparison(const StudyOptions& o, const StudyPlan& plan) {
  const fs::path dir(o.out);
  json ber = {{"rates", json::array()}, {"images", o.ber_images}, {"runs", o.runs}};
  for (const auto& s : plan.models) {
    const json sum = read_json((dir / "campaigns" / (s + "-ber") / "summary.json").string(), "campaign summary");
    ber[s] = json::array();
    ber["rates"] = json::array();
    for (const auto& b : sum.at("ber")) {
      ber["rates"].push_back(b["ber"]);
      ber[s].push_back(b["mean"]);
    }
  }
  std::vector<std::pair<std::string, std::string>> pairs{{"original", "features"},
                                                         {plan.base, "ranges"},
                                                         {plan.base, "features_ranges"}};
  if (plan.files.count("architecture"))
    pairs.insert(pairs.begin(), {{"original", "architecture"}, {"architecture", "features"}});
  for (const auto& [before, after] : pairs) {
    const std::string key = after + "_vs_" + before;
    json red = json::array();
    double sum = 0;
    int n = 0;
    for (size_t i = 0; i < ber["rates"].size(); ++i) {
      const double v = reduction(ber[before][i].get<double>(), ber[after][i].get<double>());
      red.push_back(json_number(v));
      if (std::isfinite(v)) sum += v, ++n;
    }
    ber["relative_reduction"][key] = red;
    ber["mean_relative_reduction"][key] = n ? json(sum / n) : json(nullptr);
  }
  return ber;
}

/// results.json of a study whose stages are done, with its figures and report.html.
json summarize(const StudyOptions& o, const StudyPlan& plan, const json& commands) {
  const bool ilsvrc = o.benchmark == "imagenet-sample";
  const fs::path dir(o.out);
  const DataSpec spec = parse_data_spec(ilsvrc ? "imagenet" : o.benchmark);
  const Dataset test = load_dataset(spec, Split::Test).head(o.test_images);
  const std::string& ref = plan.files.at("original");
  json r = {{"benchmark", o.benchmark}, {"reference_model", ref}, {"command", o.command},
            {"base", plan.base}, {"flipguard", build_info()}};
  r["exhaustive_scope"] =
      ilsvrc ? "on " + std::to_string(o.positions) + " positions in each of the " +
                   std::to_string(o.top_features) +
                   " most critical feature maps by eq. 5 (each model's own), as the paper's ILSVRC study"
             : "over every neuron of every site";
  if (ilsvrc)
    r["limitation"] = "the 1,000-image sample is both the fine-tuning set of Algorithm 1 and the "
                      "test set of every accuracy and campaign; the paper fine-tuned on ILSVRC's "
                      "training set and tested on its validation set";
  r["stages"] = json::array();
  for (const auto& s : plan.models) r["stages"].push_back({{"key", s}, {"title", plan.title(s)}});
  std::map<std::string, CampaignRates> campaigns;
  for (const auto& s : plan.models) {
    const std::string& file = plan.files.at(s);
    const Model m = load_model(file);
    if (!m.quant) fail("study: ", file, " is not quantized");
    r["models"][s] = {{"file", file},
                      {"arch", m.net.arch},
                      {"float_accuracy", float_accuracy(m.net, test.images, test.labels)},
                      {"quantized_accuracy",
                       QuantizedNetwork(m.net, *m.quant).accuracy(test.images, test.labels)}};
    const fs::path cdir = dir / "campaigns" / (s + "-msb");
    campaigns[s] = campaign_rates(cdir, m.net);
    const json& sum = campaigns[s].summary;
    r["exhaustive"][s] = {{"dir", cdir.string()},
                          {"images", sum["golden"]["images"]},
                          {"correct_images", sum["golden"]["correct"]},
                          {"faults", sum["overall"]["faults"]},
                          {"worst_case", sum["overall"]["worst_case"]},
                          {"mean", sum["overall"]["mean"]},
                          {"worst_fault", sum["overall"]["worst_fault"]}};
  }
  auto worst = [&](const std::string& s) { return r["exhaustive"][s]["worst_case"].get<double>(); };
  auto mean = [&](const std::string& s) { return r["exhaustive"][s]["mean"].get<double>(); };
  auto reductions = [&](const std::string& before, const std::string& after) {
    return json{{"worst_case_reduction", json_number(reduction(worst(before), worst(after)))},
                {"mean_reduction", json_number(reduction(mean(before), mean(after)))}};
  };
  if (!ilsvrc) r["architecture_optimization"] = reductions("original", "architecture");
  const json feat = read_json((dir / "features" / "features.json").string(), "feature optimization history");
  r["feature_optimization"] = reductions(plan.base, "features");
  r["feature_optimization"].update({{"iterations", feat["iterations"]},
                                    {"float_baseline", feat["float_baseline"]},
                                    {"reached_baseline", feat["reached_baseline"]},
                                    {"history", feat["history"]}});
  r["feature_optimization"]["sites"] = site_comparison(campaigns[plan.base], campaigns["features"]);
  r["range_restriction"] = reductions(plan.base, "ranges");
  r["features_and_ranges"] = reductions(plan.base, "features_ranges");
  r["combined"] = reductions("original", "features");
  r["ber"] = ber_comparison(o, plan);

  // Figures.
  double worst_all = 0;
  for (const auto& s : plan.models) worst_all = std::max(worst_all, worst(s));
  const double width =
      o.bin_width > 0 ? o.bin_width
                      : auto_bin_width(worst_all, r["exhaustive"]["original"]["correct_images"].get<int64_t>());
  std::vector<std::string> warnings;
  auto figure = [&](const std::string& key, const Plot& p) {
    const std::string why = render_plot(p, (dir / (key + ".gp")).string(), (dir / (key + ".svg")).string());
    if (!why.empty()) warnings.push_back(key + ".svg not rendered: " + why);
    r["figures"][key] = key + ".svg";
  };
  const std::string base = plan.title(plan.base);
  if (!ilsvrc)
    figure("fig3a_architecture_histogram",
           histogram_plot("MSB flips: original vs architecture-optimized",
                          {"original", "architecture-optimized"},
                          {campaigns["original"].all, campaigns["architecture"].all}, width));
  figure(ilsvrc ? "fig6_features_histogram" : "fig3b_features_histogram",
         histogram_plot("MSB flips: " + base + " vs feature-optimized", {base, "feature-optimized"},
                        {campaigns[plan.base].all, campaigns["features"].all}, width));
  figure("ranges_histogram",
         histogram_plot("MSB flips: range restriction beside feature optimization",
                        {base, "+ ranges", "feature-optimized + ranges"},
                        {campaigns[plan.base].all, campaigns["ranges"].all, campaigns["features_ranges"].all}, width));
  figure("fig7_ber", ber_plot(plan, r["ber"]));
  r["figures"]["fig5a_accuracy"] = "features/fig5a_accuracy.svg";
  r["figures"]["fig5b_criticality_sd"] = "features/fig5b_criticality_sd.svg";
  r["commands"] = commands;
  r["options"] = plan.options;
  r["bin_width"] = width;
  if (o.log)
    for (const auto& w : warnings) o.log("warning: " + w);
  write_json((dir / "results.json").string(), r);
  write_file_atomic((dir / "report.html").string(), study_report_html(r, dir.string()));
  return r;
}

}  // namespace

StudyResult run_study(const StudyOptions& o, const StageRunner& run) {
  StudyResult result{plan_study(o), {}};
  const fs::path dir(o.out);
  fs::create_directories(dir / "campaigns");
  write_json((dir / "study.json").string(), result.plan.options);
  json commands = json::array();
  for (const StudyStage& s : result.plan.stages) {
    commands.push_back({{"stage", s.name}, {"command", s.command()}, {"kept", s.done}});
    if (s.done) {
      if (o.log) o.log(s.name + ": kept (its result exists)");
      continue;
    }
    run(s);
  }
  result.results = summarize(o, result.plan, commands);
  return result;
}

}  // namespace flipguard
