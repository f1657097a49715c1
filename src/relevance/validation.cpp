// How well the estimated criticality ranks measured failure rates: average ranks, Spearman's
// correlation, top-k overlap, and the change of a site's rates under feature optimization.
#include <flipguard/error.hpp>
#include <flipguard/relevance.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace flipguard {

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

}  // namespace

FeatureRates feature_rates(const torch::Tensor& rates) {
  if (rates.dim() != 3) fail("failure rates of shape ", rates.sizes(), ": expected C x H x W");
  const auto r = rates.to(torch::kFloat64).flatten(1);
  return {to_vector(r.mean(1)), to_vector(std::get<0>(r.max(1)))};
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
