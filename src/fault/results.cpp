// What a finished campaign writes: summary.json, per-neuron arrays and tables, histograms, figures.
#include <flipguard/campaign.hpp>
#include <flipguard/error.hpp>
#include <flipguard/parse.hpp>
#include <flipguard/report.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>

namespace flipguard {

namespace fs = std::filesystem;
using nlohmann::json;

std::string tensor_label(const FaultSpace& space, size_t t) {
  return (space.target == FaultTarget::Activations ? "site" : "weights") +
         std::to_string(space.tensors.at(t).block);
}

namespace {

json stats_json(const RateStats& s) {
  return {{"count", s.count},
          {"worst_case", s.worst},
          {"mean", s.mean},
          {"quantiles", {{"0.5", s.q50}, {"0.9", s.q90}, {"0.99", s.q99}, {"0.999", s.q999}}},
          {"nonzero", s.nonzero}};
}

/// A failure rate's interval: the normal approximation, clipped to [0, 1] where it overshoots.
Interval rate_interval(const std::vector<double>& rates, double confidence,
                       std::optional<int64_t> population = std::nullopt) {
  Interval iv = mean_interval(rates, confidence, population);
  if (!std::isnan(iv.low)) iv.low = std::max(0.0, iv.low);
  if (!std::isnan(iv.high)) iv.high = std::min(1.0, iv.high);
  return iv;
}

json interval_json(const Interval& iv) {
  return {{"mean", iv.mean}, {"low", json_number(iv.low)}, {"high", json_number(iv.high)},
          {"half_width", json_number(iv.half_width)}};
}

/// Coordinates of a flat index in a shape (C order).
std::vector<int64_t> unravel(int64_t index, const std::vector<int64_t>& shape) {
  std::vector<int64_t> c(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    c[d] = index % shape[d];
    index /= shape[d];
  }
  return c;
}

std::vector<std::string> coordinate_names(const FaultSpace& space, size_t dims) {
  if (space.target == FaultTarget::Activations) return {"c", "y", "x"};
  if (dims == 4) return {"k", "c", "ky", "kx"};
  if (dims == 2) return {"out", "in"};
  std::vector<std::string> n;
  for (size_t d = 0; d < dims; ++d) n.push_back("d" + std::to_string(d));
  return n;
}

json fault_json(const FaultSpace& space, const Fault& f) {
  const auto& t = space.tensors[space.tensor_of(f.block)];
  return {{"block", f.block}, {"name", t.name}, {"index", f.index},
          {"coords", unravel(f.index, t.shape)}, {"bit", f.bit}};
}

void exhaustive_results(const std::string& dir, const CampaignPlan& plan,
                        const std::vector<double>& rate, double bin_width, json& summary,
                        std::vector<std::string>& warnings) {
  const FaultSpace& space = plan.space();
  const int per = plan.bits_per_element();
  json sites = json::array();
  CsvTable hist;
  hist.header = {"bin_low", "bin_high", "overall"};
  std::vector<std::vector<int64_t>> site_hist;
  Plot fig;
  const auto& o = plan.options();
  fig.title = std::string("Failure rates after ") +
              (o.bits == BitChoice::All ? "a flip of any bit"
               : o.bits == BitChoice::Msb ? "an MSB flip"
                                          : "a flip of bit " + std::to_string(o.bit)) +
              " in " + (space.target == FaultTarget::Activations ? "a neuron" : "a weight");
  fig.xlabel = "failure rate (%)";
  fig.ylabel = space.target == FaultTarget::Activations ? "neurons" : "weights";
  fig.logy = true;
  double worst_all = 0;
  // The fault sets of each tensor: a contiguous range, or with selected elements the ones whose
  // element lies in the tensor.
  const std::vector<int64_t>& selected = o.elements;
  for (size_t t = 0; t < space.tensors.size(); ++t) {
    const auto& ten = space.tensors[t];
    const std::string label = tensor_label(space, t);
    std::vector<int64_t> ids;
    if (selected.empty()) {
      for (int64_t i = ten.offset * per; i < (ten.offset + ten.size) * per; ++i) ids.push_back(i);
    } else {
      for (size_t k = 0; k < selected.size(); ++k)
        if (selected[k] >= ten.offset && selected[k] < ten.offset + ten.size)
          for (int b = 0; b < per; ++b) ids.push_back(static_cast<int64_t>(k) * per + b);
    }
    const int64_t n = static_cast<int64_t>(ids.size());
    std::vector<double> r;
    for (int64_t i : ids) r.push_back(rate[i]);
    std::vector<int64_t> shape = ten.shape;
    if (per > 1) shape.push_back(per);
    if (selected.empty()) {
      write_npy(dir + "/rates_" + label + ".npy", r, shape);
    } else {
      // The tensor's shape, NaN where no fault was injected.
      std::vector<double> full(static_cast<size_t>(ten.size * per),
                               std::numeric_limits<double>::quiet_NaN());
      for (int64_t k = 0; k < n; ++k) {
        const Fault f = plan.faults(ids[k])[0];
        full[f.index * per + (per > 1 ? f.bit : 0)] = r[k];
      }
      write_npy(dir + "/rates_" + label + ".npy", full, shape);
    }
    CsvTable csv;
    csv.header = {"index"};
    const auto names = coordinate_names(space, ten.shape.size());
    csv.header.insert(csv.header.end(), names.begin(), names.end());
    csv.header.insert(csv.header.end(), {"bit", "failure_rate"});
    int64_t worst_i = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Fault f = plan.faults(ids[i])[0];
      std::vector<std::string> row{std::to_string(f.index)};
      for (int64_t c : unravel(f.index, ten.shape)) row.push_back(std::to_string(c));
      row.push_back(std::to_string(f.bit));
      row.push_back(format_number(r[i]));
      csv.rows.push_back(std::move(row));
      if (r[i] > r[worst_i]) worst_i = i;
    }
    write_csv(dir + "/rates_" + label + ".csv", csv);
    json site = {{"block", ten.block}, {"name", ten.name}, {"label", label}, {"shape", ten.shape},
                 {"elements", ten.size}, {"bits", ten.bits}, {"faults", n}};
    site.update(stats_json(rate_stats(r)));
    if (!selected.empty()) site["evaluated_elements"] = n / per;
    if (n) site["worst_fault"] = fault_json(space, plan.faults(ids[worst_i])[0]);
    sites.push_back(site);
    hist.header.push_back(label);
    site_hist.push_back(rate_histogram(r, bin_width));
    if (n) worst_all = std::max(worst_all, r[worst_i]);
  }
  const auto overall = rate_histogram(rate, bin_width);
  for (size_t k = 0; k < overall.size(); ++k) {
    std::vector<std::string> row{format_number(k * bin_width),
                                 format_number(std::min(1.0, (k + 1) * bin_width)),
                                 std::to_string(overall[k])};
    for (const auto& h : site_hist) row.push_back(std::to_string(h[k]));
    hist.rows.push_back(std::move(row));
  }
  write_csv(dir + "/histogram.csv", hist);
  json all = stats_json(rate_stats(rate));
  all["faults"] = static_cast<int64_t>(rate.size());
  if (!rate.empty()) {
    const auto it = std::max_element(rate.begin(), rate.end());
    all["worst_fault"] = fault_json(space, plan.faults(it - rate.begin())[0]);
  }
  summary["sites"] = sites;
  summary["overall"] = all;
  summary["histogram"] = {{"bin_width", bin_width}, {"file", "histogram.csv"}};
  // The figure: bins up to the worst case, the overall count as bars, each tensor as steps.
  const size_t shown = std::min(overall.size(), static_cast<size_t>(worst_all / bin_width) + 1);
  auto series = [&](const std::string& title, const std::vector<int64_t>& h, const std::string& style) {
    Series s;
    s.title = title;
    s.style = style;
    for (size_t k = 0; k < shown; ++k) {
      s.x.push_back(100 * (k + 0.5) * bin_width);
      s.y.push_back(static_cast<double>(h[k]));
    }
    return s;
  };
  fig.series.push_back(series("all", overall, "boxes"));
  if (space.tensors.size() > 1)
    for (size_t t = 0; t < space.tensors.size(); ++t)
      fig.series.push_back(series(tensor_label(space, t) + " " + space.tensors[t].name,
                                  site_hist[t], "histeps"));
  fig.xmin = 0;
  fig.xmax = 100 * shown * bin_width;
  const std::string why = render_plot(fig, dir + "/histogram.gp", dir + "/histogram.svg");
  if (!why.empty()) warnings.push_back("histogram.svg not rendered: " + why);
  else summary["histogram"]["figure"] = "histogram.svg";
}

/// The per-fault table of a sampled or list campaign (`stem`.csv with block, name, index, bit,
/// failure_rate; `stem`.npy with the rates), the overall and per-site statistics in `summary`;
/// the rates per tensor.
std::vector<std::vector<double>> fault_table_results(const std::string& dir, const std::string& stem,
                                                     const CampaignPlan& plan,
                                                     const std::vector<double>& rate, json& summary) {
  const FaultSpace& space = plan.space();
  CsvTable csv;
  csv.header = {"block", "name", "index", "bit", "failure_rate"};
  std::vector<std::vector<double>> per(space.tensors.size());
  for (size_t i = 0; i < rate.size(); ++i) {
    const Fault f = plan.faults(static_cast<int64_t>(i))[0];
    const size_t t = space.tensor_of(f.block);
    per[t].push_back(rate[i]);
    csv.rows.push_back({std::to_string(f.block), space.tensors[t].name, std::to_string(f.index),
                        std::to_string(f.bit), format_number(rate[i])});
  }
  write_csv(dir + "/" + stem + ".csv", csv);
  write_npy(dir + "/" + stem + ".npy", rate, {static_cast<int64_t>(rate.size())});
  summary["overall"] = stats_json(rate_stats(rate));
  json sites = json::array();
  for (size_t t = 0; t < space.tensors.size(); ++t) {
    const auto& ten = space.tensors[t];
    json s = {{"block", ten.block}, {"name", ten.name}, {"label", tensor_label(space, t)},
              {"shape", ten.shape}, {"elements", ten.size}, {"bits", ten.bits}};
    s.update(stats_json(rate_stats(per[t])));
    sites.push_back(s);
  }
  summary["sites"] = sites;
  return per;
}

void sampled_results(const std::string& dir, const CampaignPlan& plan,
                     const std::vector<double>& rate, json& summary) {
  const FaultSpace& space = plan.space();
  const auto& o = plan.options();
  const auto per = fault_table_results(dir, "samples", plan, rate, summary);
  summary["population"] = space.positions();
  summary["sample_size"] = static_cast<int64_t>(rate.size());
  summary["margin"] = o.error;
  summary["confidence"] = o.confidence;
  summary["overall"]["estimate"] = interval_json(rate_interval(rate, o.confidence, space.positions()));
  for (size_t t = 0; t < space.tensors.size(); ++t) {
    const auto& ten = space.tensors[t];
    summary["sites"][t]["estimate"] = interval_json(rate_interval(per[t], o.confidence, ten.size * ten.bits));
  }
}

void ber_results(const std::string& dir, const CampaignPlan& plan, const std::vector<double>& rate,
                 const std::vector<int64_t>& flips_per_set, json& summary,
                 std::vector<std::string>& warnings) {
  const auto& o = plan.options();
  CsvTable csv;
  csv.header = {"ber", "runs", "mean_flips", "mean_failure_rate", "ci_low", "ci_high", "worst"};
  json rows = json::array();
  Series s;
  s.title = "mean failure rate, " + format_number(100 * o.confidence) + " % interval";
  s.style = "yerrorlines";
  for (size_t k = 0; k < o.ber.size(); ++k) {
    const std::vector<double> r(rate.begin() + k * o.runs, rate.begin() + (k + 1) * o.runs);
    double flips = 0;
    for (int64_t run = 0; run < o.runs; ++run)
      flips += static_cast<double>(flips_per_set[k * o.runs + run]);
    flips /= static_cast<double>(o.runs);
    const Interval iv = rate_interval(r, o.confidence);
    const RateStats st = rate_stats(r);
    json row = {{"ber", o.ber[k]}, {"runs", o.runs}, {"mean_flips", flips}};
    row.update(interval_json(iv));
    row["worst"] = st.worst;
    rows.push_back(row);
    csv.rows.push_back({format_number(o.ber[k]), std::to_string(o.runs), format_number(flips),
                        format_number(iv.mean), format_number(iv.low), format_number(iv.high),
                        format_number(st.worst)});
    s.x.push_back(o.ber[k]);
    s.y.push_back(100 * iv.mean);
    s.y_low.push_back(100 * (std::isnan(iv.low) ? iv.mean : iv.low));
    s.y_high.push_back(100 * (std::isnan(iv.high) ? iv.mean : iv.high));
  }
  write_csv(dir + "/ber.csv", csv);
  write_npy(dir + "/ber_rates.npy", rate, {static_cast<int64_t>(o.ber.size()), o.runs});
  summary["ber"] = rows;
  Plot fig;
  fig.title = "Failure rate against bit error rate (Fig. 7)";
  fig.xlabel = "bit error rate";
  fig.ylabel = "failure rate (%)";
  fig.logx = true;
  fig.series.push_back(s);
  const std::string why = render_plot(fig, dir + "/ber.gp", dir + "/ber.svg");
  if (!why.empty()) warnings.push_back("ber.svg not rendered: " + why);
  else summary["figure"] = "ber.svg";
}

/// Whether `name` is a file that write_campaign_results writes (of any kind of campaign).
bool is_result_file(const std::string& name) {
  static const std::regex result(
      R"(rates_(site|weights)[0-9]+\.(csv|npy)|(samples|faults)\.(csv|npy)|ber\.(csv|gp|svg)|)"
      R"(ber_rates\.npy|histogram\.(csv|gp|svg)|summary\.json)");
  return std::regex_match(name, result);
}

/// Removes the result files of an earlier campaign from `dir`, so that it holds one campaign's
/// results: a rerun of other sites or of another kind would otherwise leave the earlier
/// rates_siteK files beside the new summary. Checkpoints and other files stay.
void remove_earlier_results(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file() || !is_result_file(e.path().filename().string())) continue;
    if (!fs::remove(e.path(), ec) && ec)
      fail("cannot remove '", e.path().string(), "', a result file of an earlier campaign: ",
           ec.message());
  }
}

}  // namespace

double auto_bin_width(double worst, int64_t images) {
  const double target = std::max(worst / 25, images > 0 ? 1.0 / static_cast<double>(images) : 0.01);
  for (int e = -6; e <= 0; ++e)
    for (const int m : {1, 2, 5}) {
      const double w = m * std::pow(10.0, e);
      if (w >= target * (1 - 1e-12)) return w;
    }
  return 1.0;
}

json write_campaign_results(const std::string& dir, const CampaignPlan& plan,
                            const CampaignCounts& counts, const GoldenTotals& golden,
                            const json& meta, double bin_width, std::vector<std::string>& warnings) {
  if (!counts.complete()) fail("campaign results asked for before every fault set was evaluated");
  const auto& o = plan.options();
  const int64_t images = golden.correct;
  std::vector<double> rate(counts.failures.size());
  for (size_t i = 0; i < rate.size(); ++i)
    rate[i] = images ? static_cast<double>(counts.failures[i]) / images : 0.0;
  // BER fault sets are drawn anew on each call to faults(): count their flips once.
  std::vector<int64_t> flips_per_set(rate.size());
  int64_t flips = 0;
  for (int64_t i = 0; i < plan.size(); ++i) flips += flips_per_set[i] = static_cast<int64_t>(plan.faults(i).size());
  json summary = meta;
  summary["campaign"] = o.campaign;
  summary["target"] = to_string(o.target);
  summary["seed"] = o.seed;
  summary["golden"] = {{"images", golden.images}, {"correct", golden.correct},
                       {"accuracy", golden.accuracy()}};
  summary["images"] = images;
  summary["fault_sets"] = plan.size();
  summary["faults"] = flips;
  const double evaluations = static_cast<double>(plan.size()) * images;
  summary["evaluations"] = evaluations;
  summary["wall_seconds"] = counts.seconds;
  summary["evaluations_per_second"] = counts.seconds > 0 ? evaluations / counts.seconds : 0.0;
  if (bin_width <= 0)
    bin_width = auto_bin_width(rate.empty() ? 0.0 : *std::max_element(rate.begin(), rate.end()), images);
  remove_earlier_results(dir);
  if (o.campaign == "exhaustive") exhaustive_results(dir, plan, rate, bin_width, summary, warnings);
  else if (o.campaign == "sampled") sampled_results(dir, plan, rate, summary);
  else if (o.campaign == "list") fault_table_results(dir, "faults", plan, rate, summary);
  else ber_results(dir, plan, rate, flips_per_set, summary, warnings);
  write_json(dir + "/summary.json", summary);
  return summary;
}

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

/// A rates_siteK.csv table (index, c, y, x, bit, failure_rate) as a C x H x W tensor.
torch::Tensor rates_from_csv(const std::string& path, const Shape& shape) {
  std::ifstream in(path);
  if (!in) fail("cannot open '", path, "'");
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line != "index,c,y,x,bit,failure_rate")
    fail("'", path, "' starts with '", line, "': expected the header ",
         "index,c,y,x,bit,failure_rate of an exhaustive campaign on activations");
  auto rates = torch::full({shape.c, shape.h, shape.w}, NAN, torch::kFloat64);
  auto acc = rates.accessor<double, 3>();
  int64_t row = 1;
  while (std::getline(in, line)) {
    ++row;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::stringstream ss(line);
    std::vector<std::string> cells;
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (cells.size() != 6)
      fail("'", path, "' row ", row, " has ", cells.size(), " cells: expected 6");
    const std::optional<int64_t> oc = parse_integer(cells[1]), oy = parse_integer(cells[2]),
                                 ox = parse_integer(cells[3]);
    const std::optional<double> rate = parse_number(cells[5]);
    if (!oc || !oy || !ox || !rate || !std::isfinite(*rate))
      fail("'", path, "' row ", row, " is '", line, "': expected whole numbers c, y, x and a ",
           "failure rate");
    const int64_t c = *oc, y = *oy, x = *ox;
    if (c < 0 || c >= shape.c || y < 0 || y >= shape.h || x < 0 || x >= shape.w)
      fail("'", path, "' row ", row, " names neuron (", c, ", ", y, ", ", x,
           ") outside the site's ", shape.str());
    if (!std::isnan(acc[c][y][x]))
      fail("'", path, "' row ", row, " repeats neuron (", c, ", ", y, ", ", x,
           "): expected one bit per neuron (a campaign of bits Msb or One)");
    acc[c][y][x] = *rate;
  }
  if (torch::isnan(rates).any().item<bool>())
    fail("'", path, "' lacks the rates of some of the site's ", shape.numel(), " neurons");
  return rates;
}

}  // namespace

torch::Tensor read_site_rates(const std::string& dir, int site, const Shape& shape) {
  const std::string base = (fs::path(dir) / ("rates_site" + std::to_string(site))).string();
  torch::Tensor rates;
  if (fs::exists(base + ".npy")) {
    const NpyArray a = read_npy(base + ".npy");
    const std::vector<int64_t> want{shape.c, shape.h, shape.w};
    if (a.shape != want)
      fail("'", base, ".npy' holds rates of shape ", shape_text(a.shape), " but site ", site,
           " is ", shape.str(), ": expected the per-neuron rates of an exhaustive campaign of one ",
           "bit (bits Msb or One) on this architecture");
    rates = torch::tensor(a.data, torch::kFloat64).view(want);
  } else if (fs::exists(base + ".csv")) {
    rates = rates_from_csv(base + ".csv", shape);
  } else {
    fail("no rates_site", site, ".npy or .csv in '", dir, "': expected the results of an ",
         "exhaustive campaign that include site ", site);
  }
  // NaN marks a neuron that a limited campaign did not measure (docs/faults.md).
  if ((rates < 0).any().item<bool>() || (rates > 1).any().item<bool>())
    fail("'", base, "' holds failure rates outside [0, 1]");
  return rates;
}

CampaignResults read_campaign(const std::string& dir, const Network& net) {
  if (!fs::is_directory(dir)) fail("campaign directory '", dir, "' does not exist");
  CampaignResults c;
  const std::string summary = (fs::path(dir) / "summary.json").string();
  if (fs::exists(summary)) {
    json& s = c.summary = read_json(summary, "campaign summary");
    if (!s.is_object())
      fail("'", summary, "' is not a campaign summary: expected a JSON object");
    auto expect = [&](const char* key, const std::string& want) {
      const auto it = s.find(key);
      const std::string got = it == s.end() ? want : it->is_string() ? it->get<std::string>() : it->dump();
      if (got != want)
        fail("'", summary, "' describes a campaign with ", key, " '", got, "': expected '", want,
             "'");
    };
    expect("arch", net.arch);
    expect("campaign", "exhaustive");
    expect("target", "activations");
  }
  const auto shapes = net.shapes();
  for (int b : net.sites()) {
    const std::string base = (fs::path(dir) / ("rates_site" + std::to_string(b))).string();
    if (fs::exists(base + ".npy") || fs::exists(base + ".csv"))
      c.rates[b] = read_site_rates(dir, b, shapes[b]);
  }
  if (c.rates.empty())
    fail("'", dir, "' holds no rates_siteK.npy or .csv: expected the results of an exhaustive ",
         "campaign");
  return c;
}

std::map<int, torch::Tensor> read_campaign_rates(const std::vector<std::string>& dirs,
                                                 const Network& net) {
  if (dirs.empty()) fail("no campaign directory: expected at least one");
  std::map<int, torch::Tensor> rates;
  std::map<int, std::string> from;
  for (const std::string& dir : dirs)
    for (auto& [site, r] : read_campaign(dir, net).rates) {
      if (from.count(site))
        fail("site ", site, " is in both campaign directories '", from[site], "' and '", dir,
             "': expected each site in one of them");
      from[site] = dir;
      rates[site] = std::move(r);
    }
  return rates;
}

}  // namespace flipguard
