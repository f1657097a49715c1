// How well the estimated criticality ranks measured failure rates: average ranks, Spearman's
// correlation, top-k overlap, and the per-neuron rates of an exhaustive campaign.
#include <flipguard/error.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

namespace flipguard {

namespace fs = std::filesystem;

std::vector<double> average_ranks(const std::vector<double>& x) {
  std::vector<size_t> order(x.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  std::vector<double> rank(x.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && x[order[j + 1]] == x[order[i]]) ++j;
    const double shared = (static_cast<double>(i) + static_cast<double>(j)) / 2 + 1;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = shared;
    i = j + 1;
  }
  return rank;
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size())
    fail("Spearman correlation of ", x.size(), " and ", y.size(), " values: expected pairs");
  if (x.size() < 2) return NAN;
  const auto rx = average_ranks(x), ry = average_ranks(y);
  const double mean = (static_cast<double>(x.size()) + 1) / 2;  // the mean of ranks 1..n
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (rx[i] - mean) * (ry[i] - mean);
    sxx += (rx[i] - mean) * (rx[i] - mean);
    syy += (ry[i] - mean) * (ry[i] - mean);
  }
  if (sxx == 0 || syy == 0) return NAN;
  return sxy / std::sqrt(sxx * syy);
}

std::vector<int64_t> top_k(const std::vector<double>& x, int64_t k) {
  std::vector<int64_t> order(x.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] > x[b]; });
  order.resize(static_cast<size_t>(std::clamp<int64_t>(k, 0, static_cast<int64_t>(x.size()))));
  return order;
}

double top_k_overlap(const std::vector<double>& a, const std::vector<double>& b, int64_t k) {
  if (a.size() != b.size())
    fail("top-k overlap of ", a.size(), " and ", b.size(), " features: expected the same features");
  const auto ta = top_k(a, k), tb = top_k(b, k);
  if (tb.empty()) return 0;
  // b's top k: every value above the k-th for sure, and of the values equal to it as many as
  // places are left, each with the same chance.
  const double kth = b[tb.back()];
  const auto above = std::count_if(b.begin(), b.end(), [&](double v) { return v > kth; });
  const auto tied = std::count(b.begin(), b.end(), kth);
  const double chance = static_cast<double>(static_cast<int64_t>(tb.size()) - above) / tied;
  double overlap = 0;
  for (int64_t i : ta) overlap += b[i] > kth ? 1.0 : b[i] == kth ? chance : 0.0;
  return overlap;
}

namespace {

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

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
  if (line != "index,c,y,x,bit,failure_rate")
    fail("'", path, "' starts with '", line, "': expected the header ",
         "index,c,y,x,bit,failure_rate of an exhaustive campaign on activations");
  auto rates = torch::full({shape.c, shape.h, shape.w}, NAN, torch::kFloat64);
  auto acc = rates.accessor<double, 3>();
  int64_t row = 1;
  while (std::getline(in, line)) {
    ++row;
    std::stringstream ss(line);
    std::vector<double> cells;
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(std::strtod(cell.c_str(), nullptr));
    if (cells.size() != 6)
      fail("'", path, "' row ", row, " has ", cells.size(), " cells: expected 6");
    const int64_t c = static_cast<int64_t>(cells[1]), y = static_cast<int64_t>(cells[2]),
                  x = static_cast<int64_t>(cells[3]);
    if (c < 0 || c >= shape.c || y < 0 || y >= shape.h || x < 0 || x >= shape.w)
      fail("'", path, "' row ", row, " names neuron (", c, ", ", y, ", ", x,
           ") outside the site's ", shape.str());
    if (!std::isnan(acc[c][y][x]))
      fail("'", path, "' row ", row, " repeats neuron (", c, ", ", y, ", ", x,
           "): expected one bit per neuron (a campaign of --bit msb or --bit N)");
    acc[c][y][x] = cells[5];
  }
  if (torch::isnan(rates).any().item<bool>())
    fail("'", path, "' lacks the rates of some of the site's ", shape.numel(), " neurons");
  return rates;
}

}  // namespace

FeatureRates feature_rates(const torch::Tensor& rates) {
  if (rates.dim() != 3) fail("failure rates of shape ", rates.sizes(), ": expected C x H x W");
  const auto r = rates.to(torch::kFloat64).flatten(1);
  return {to_vector(r.mean(1)), to_vector(std::get<0>(r.max(1)))};
}

torch::Tensor read_site_rates(const std::string& dir, int site, const Shape& shape) {
  const std::string base = (fs::path(dir) / ("rates_site" + std::to_string(site))).string();
  torch::Tensor rates;
  if (fs::exists(base + ".npy")) {
    const NpyArray a = read_npy(base + ".npy");
    const std::vector<int64_t> want{shape.c, shape.h, shape.w};
    if (a.shape != want)
      fail("'", base, ".npy' holds rates of shape ", shape_text(a.shape), " but site ", site,
           " is ", shape.str(), ": expected the per-neuron rates of an exhaustive campaign of one ",
           "bit (--bit msb or --bit N) on this architecture");
    rates = torch::tensor(a.data, torch::kFloat64).view(want);
  } else if (fs::exists(base + ".csv")) {
    rates = rates_from_csv(base + ".csv", shape);
  } else {
    fail("no rates_site", site, ".npy or .csv in '", dir, "': expected the results of `flipguard ",
         "inject --campaign exhaustive` that include site ", site);
  }
  if ((rates < 0).any().item<bool>() || (rates > 1).any().item<bool>())
    fail("'", base, "' holds failure rates outside [0, 1]");
  return rates;
}

std::map<int, torch::Tensor> read_campaign_rates(const std::string& dir, const Network& net) {
  if (!fs::is_directory(dir)) fail("campaign directory '", dir, "' does not exist");
  const std::string summary = (fs::path(dir) / "summary.json").string();
  if (fs::exists(summary)) {
    nlohmann::json s;
    try {
      s = nlohmann::json::parse(std::ifstream(summary));
    } catch (const nlohmann::json::exception& e) {
      fail("'", summary, "' is not valid JSON: ", e.what());
    }
    auto expect = [&](const char* key, const std::string& want) {
      const std::string got = s.value(key, want);
      if (got != want)
        fail("'", summary, "' describes a campaign with ", key, " '", got, "': expected '", want,
             "'");
    };
    expect("arch", net.arch);
    expect("campaign", "exhaustive");
    expect("target", "activations");
  }
  const auto shapes = net.shapes();
  std::map<int, torch::Tensor> rates;
  for (int b : net.sites()) {
    const std::string base = (fs::path(dir) / ("rates_site" + std::to_string(b))).string();
    if (fs::exists(base + ".npy") || fs::exists(base + ".csv"))
      rates[b] = read_site_rates(dir, b, shapes[b]);
  }
  if (rates.empty())
    fail("'", dir, "' holds no rates_siteK.npy or .csv: expected the results of `flipguard inject ",
         "--campaign exhaustive`");
  return rates;
}

std::map<int, torch::Tensor> read_campaign_rates(const std::vector<std::string>& dirs,
                                                 const Network& net) {
  if (dirs.empty()) fail("no campaign directory: expected at least one");
  std::map<int, torch::Tensor> rates;
  std::map<int, std::string> from;
  for (const std::string& dir : dirs)
    for (auto& [site, r] : read_campaign_rates(dir, net)) {
      if (from.count(site))
        fail("site ", site, " is in both campaign directories '", from[site], "' and '", dir,
             "': expected each site in one of them");
      from[site] = dir;
      rates[site] = std::move(r);
    }
  return rates;
}

SiteValidation validate_site(const torch::Tensor& eta, const torch::Tensor& rho,
                             const torch::Tensor& rates, int64_t k) {
  SiteValidation v;
  v.rates = feature_rates(rates);
  const auto e = to_vector(eta), r = to_vector(rho);
  if (e.size() != v.rates.mean.size() || r.size() != e.size())
    fail("criticality of ", e.size(), " features against the rates of ", v.rates.mean.size(),
         " features: expected the same site");
  if (k < 1) fail("top-k of k = ", k, ": expected k >= 1");
  v.spearman_mean = spearman(e, v.rates.mean);
  v.spearman_max = spearman(e, v.rates.max);
  v.spearman_rho_mean = spearman(r, v.rates.mean);
  v.k = std::min<int64_t>(k, static_cast<int64_t>(e.size()));
  v.overlap_mean = top_k_overlap(e, v.rates.mean, v.k);
  v.overlap_max = top_k_overlap(e, v.rates.max, v.k);
  v.sd_mean_rate = normalized_sd(torch::tensor(v.rates.mean, torch::kFloat64));
  v.sd_max_rate = normalized_sd(torch::tensor(v.rates.max, torch::kFloat64));
  return v;
}

FeatureChange feature_change(const std::vector<double>& eta_before, const FeatureRates& before,
                             const FeatureRates& after) {
  const size_t n = eta_before.size();
  if (before.mean.size() != n || before.max.size() != n || after.mean.size() != n ||
      after.max.size() != n)
    fail("feature change of ", n, " criticalities against ", before.mean.size(),
         " features before and ", after.mean.size(), " after: expected the same site");
  if (n == 0) fail("feature change of a site without features: expected at least one");
  const auto tensor = [](const std::vector<double>& v) { return torch::tensor(v, torch::kFloat64); };
  const auto mean = [](const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  };
  FeatureChange c;
  c.features = static_cast<int64_t>(n);
  c.sd_eta = normalized_sd(tensor(eta_before));
  c.spearman_eta_max = spearman(eta_before, before.max);
  c.sd_max_rate_before = normalized_sd(tensor(before.max));
  c.sd_max_rate_after = normalized_sd(tensor(after.max));
  c.worst_before = *std::max_element(before.max.begin(), before.max.end());
  c.worst_after = *std::max_element(after.max.begin(), after.max.end());
  // Every feature has H x W neurons: the mean of the features' means is the neurons' mean.
  c.mean_before = mean(before.mean);
  c.mean_after = mean(after.mean);
  std::vector<double> eta, ratio;
  for (size_t f = 0; f < n; ++f) {
    c.features_worse += after.max[f] > before.max[f];
    if (!(before.mean[f] > 0)) continue;
    eta.push_back(eta_before[f]);
    ratio.push_back(after.mean[f] / before.mean[f]);
  }
  c.compared = static_cast<int64_t>(eta.size());
  c.spearman_factor_change = spearman(eta, ratio);
  return c;
}

}  // namespace flipguard
