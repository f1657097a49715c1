#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>

#include <cmath>

namespace flipguard {

torch::Tensor adjust_weights(const torch::Tensor& weight, const torch::Tensor& eta) {
  if (!weight.defined() || (weight.dim() != 4 && weight.dim() != 2))
    fail("eq. 6: weights must be K x C x U x V or K x (C*H*W), got ",
         weight.defined() ? weight.sizes() : c10::IntArrayRef{});
  const auto e = eta.to(torch::kFloat64).contiguous();
  if (e.dim() != 1 || e.size(0) < 1) fail("eq. 6: criticality must be a vector of C values");
  const int64_t c = e.size(0);
  const int64_t per = weight.dim() == 4 ? 1 : weight.size(1) / c;
  if ((weight.dim() == 4 && weight.size(1) != c) ||
      (weight.dim() == 2 && (weight.size(1) % c != 0 || per < 1)))
    fail("eq. 6: ", c, " criticality values for weights of shape ", weight.sizes(),
         ": expected one per input feature");
  const auto* v = e.data_ptr<double>();
  double sum = 0;
  for (int64_t i = 0; i < c; ++i) {
    if (!std::isfinite(v[i]) || v[i] < 0)
      fail("eq. 6: criticality of feature ", i, " is ", v[i], ": expected a finite value >= 0");
    sum += v[i];
  }
  if (!(sum > 0)) fail("eq. 6: every feature has criticality 0: nothing to equalize");
  // factor_c = Σ η / (C · η_c); 1 where η_c = 0.
  auto factor = torch::ones({c}, torch::kFloat64);
  auto* f = factor.data_ptr<double>();
  for (int64_t i = 0; i < c; ++i)
    if (v[i] > 0) f[i] = sum / (static_cast<double>(c) * v[i]);
  const auto w = weight.to(torch::kFloat64);
  torch::Tensor scaled;
  if (weight.dim() == 4) {
    scaled = w * factor.view({1, c, 1, 1});
  } else {
    scaled = (w.view({w.size(0), c, per}) * factor.view({1, c, 1})).view(w.sizes());
  }
  return scaled.to(weight.scalar_type());
}

}  // namespace flipguard
