// Feature relevance (eq. 4), feature bit-flip criticality (eq. 5) and their spread (Fig. 5b).
#include <flipguard/error.hpp>
#include <flipguard/relevance.hpp>

#include <cmath>

namespace flipguard {

torch::Tensor feature_relevance(const torch::Tensor& mean_relevance) {
  if (mean_relevance.dim() != 3)
    fail("feature relevance (eq. 4) of a tensor of shape ", mean_relevance.sizes(),
         ": expected C x H x W");
  return mean_relevance.to(torch::kFloat64).sum({1, 2});
}

torch::Tensor feature_criticality(const torch::Tensor& weight, const torch::Tensor& rho_next,
                                  int64_t groups) {
  if (weight.dim() != 4 || rho_next.dim() != 1 || rho_next.size(0) != weight.size(0))
    fail("feature criticality (eq. 5) of weights ", weight.sizes(), " and ", rho_next.numel(),
         " feature relevances: expected K x C x U x V weights and K relevances");
  if (groups < 1 || weight.size(0) % groups != 0)
    fail("feature criticality (eq. 5) of a convolution of ", groups, " groups with ",
         weight.size(0), " outputs: expected a positive number of groups that divides them");
  const auto w = weight.to(torch::kFloat64).abs();
  const double count = static_cast<double>(w.size(0) * w.size(2) * w.size(3));
  const auto terms = w * rho_next.to(torch::kFloat64).view({-1, 1, 1, 1});
  if (groups == 1) return terms.sum({0, 2, 3}) / count;
  // Outputs g·K/G .. (g+1)·K/G − 1 read input features g·C/G .. (g+1)·C/G − 1.
  return terms.sum({2, 3}).view({groups, w.size(0) / groups, w.size(1)}).sum(1).flatten() / count;
}

namespace {

/// The real weights of a weighted block as K x C x U x V for eq. 5: a fully-connected layer's
/// K x (C·H·W) matrix is a convolution whose kernel covers its whole C x H x W input.
torch::Tensor reader_weights(const QuantizedNetwork& q, int r, const Shape& input) {
  const auto w = q.weight_codes(r).to(torch::kFloat64) * q.formats().weight[r].step();
  if (q.network().blocks[r].op == Op::Linear) return w.view({w.size(0), input.c, input.h, input.w});
  return w;
}

}  // namespace

std::vector<SiteCriticality> site_criticality(const QuantizedNetwork& q, const MeanRelevance& r) {
  const Network& net = q.network();
  const int nb = static_cast<int>(net.blocks.size());
  if (static_cast<int>(r.blocks.size()) != nb)
    fail("mean relevance of ", r.blocks.size(), " blocks for a network of ", nb);
  const auto shapes = net.shapes();
  std::vector<torch::Tensor> rho(nb), eta(nb);
  for (int b = 0; b < nb; ++b) rho[b] = feature_relevance(r.blocks[b]);
  std::vector<SiteCriticality> sites(nb - 1);
  // Readers come later in topological order: walk backwards, so that a pooling, concatenation or
  // addition reader's own criticality is known when its input's is computed.
  for (int b = nb - 2; b >= 0; --b) {
    SiteCriticality& s = sites[b];
    s.block = b;
    s.rho = rho[b];
    for (int rd = b + 1; rd < nb; ++rd) {
      const Block& reader = net.blocks[rd];
      int64_t offset = 0;  // channel offset of this input in a concatenation
      for (int j : reader.inputs) {
        const int64_t channels = j == Block::kNetworkInput ? net.input.c : shapes[j].c;
        if (j == b) {
          if (s.readers.empty() || s.readers.back() != rd) s.readers.push_back(rd);
          torch::Tensor term;
          if (reader.weighted()) {
            term = feature_criticality(reader_weights(q, rd, shapes[b]), rho[rd], reader.groups);
            s.weighted.push_back(rd);
          } else if (rd + 1 < nb && eta[rd].defined()) {
            // An addition's inputs each map feature c to its feature c; a concatenation's to the
            // channels at their offset.
            const int64_t first = reader.op == Op::Add ? 0 : offset;
            term = eta[rd].slice(0, first, first + channels);
            s.weighted.insert(s.weighted.end(), sites[rd].weighted.begin(),
                              sites[rd].weighted.end());
          }
          if (term.defined()) eta[b] = eta[b].defined() ? eta[b] + term : term;
        }
        offset += channels;
      }
    }
    s.eta = eta[b];
  }
  return sites;
}

double normalized_sd(const torch::Tensor& eta) {
  const auto e = eta.to(torch::kFloat64);
  const double mean = e.mean().item<double>();
  if (mean == 0 || e.numel() == 0) return NAN;
  return (e / mean - 1.0).square().mean().sqrt().item<double>();
}

double mean_normalized_sd(const std::vector<torch::Tensor>& etas) {
  double sum = 0;
  int count = 0;
  for (const auto& e : etas) {
    const double sd = e.defined() ? normalized_sd(e) : NAN;
    if (std::isnan(sd)) continue;
    sum += sd;
    ++count;
  }
  return count ? sum / count : NAN;
}

std::vector<CriticalFeature> most_critical_features(const std::vector<SiteCriticality>& sites,
                                                    int64_t k) {
  std::vector<CriticalFeature> all;
  for (const SiteCriticality& s : sites) {
    if (!s.eta.defined()) continue;
    const auto eta = s.eta.to(torch::kFloat64).contiguous();
    for (int64_t c = 0; c < eta.numel(); ++c)
      all.push_back({s.block, c, eta.data_ptr<double>()[c]});
  }
  std::stable_sort(all.begin(), all.end(), [](const CriticalFeature& a, const CriticalFeature& b) {
    return a.eta > b.eta;
  });
  if (k >= 0 && static_cast<int64_t>(all.size()) > k) all.resize(static_cast<size_t>(k));
  return all;
}

}  // namespace flipguard
