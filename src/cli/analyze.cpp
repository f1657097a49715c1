// flipguard analyze: resilience estimation by layer-wise relevance propagation (section III), and
// how well it ranks the failure rates of an exhaustive campaign.
#include "cli.hpp"
#include "progress.hpp"

#include <flipguard/error.hpp>
#include <flipguard/relevance.hpp>
#include <flipguard/report.hpp>

#include <cmath>
#include <cstdio>

namespace flipguard::cli {

namespace {

struct AnalyzeArgs {
  std::string input_rule = "auto";
  AnalysisOptions o;
};

std::vector<double> values(const torch::Tensor& t) {
  const auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

void print_site(const Network& net, const Shape& shape, const SiteCriticality& s,
                const torch::Tensor& mean_relevance, const SiteValidation* v) {
  std::printf("  %-6s %-8s %-9s relevance %.4f", site_label(s.block).c_str(),
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
                site_label(block).c_str(), net.blocks[block].name.c_str(),
                format_fixed(c.sd_eta, 3).c_str(), format_fixed(c.spearman_eta_max, 3).c_str(),
                spread, worst, mean, format_fixed(c.spearman_factor_change, 3).c_str(),
                (long long)c.features_worse, (long long)c.features);
  }
}

void print_analysis(const Analysis& an) {
  const Network& net = an.net;
  std::printf("%s: relevance over %lld %s training images (input rule %s) in %s; "
              "input relevance %.4f\n",
              net.arch.c_str(), (long long)an.relevance.images, an.data.c_str(),
              to_string(an.rule).c_str(), format_duration(an.seconds).c_str(),
              an.relevance.input.sum().item<double>());
  const auto shapes = net.shapes();
  for (const auto& s : an.sites)
    print_site(net, shapes[s.block], s, an.relevance.blocks[s.block],
               an.checks.count(s.block) ? &an.checks.at(s.block) : nullptr);
  const double sd = an.mean_sd();
  if (!std::isnan(sd)) std::printf("  mean SD of normalized criticality (Fig. 5b): %.4f\n", sd);
}

void run_analyze(AnalyzeArgs a) {
  a.o.relevance.input_rule = parse_input_rule(a.input_rule);
  a.o.command = command_line();
  a.o.log = [](const std::string& line) { log(line); };
  a.o.relevance.progress = phase_lines();
  const Analysis an = analyze(a.o);
  print_analysis(an);
  if (!an.changes.empty()) print_changes(an.net, an.baseline, an.changes);
  std::printf("results in %s\n", a.o.out.c_str());
}

}  // namespace

void add_analyze(CLI::App& app, Action& action) {
  auto a = std::make_shared<AnalyzeArgs>();
  auto* cmd = app.add_subcommand(
      "analyze",
      "feature relevance and bit-flip criticality by relevance propagation (section III)");
  cmd->add_option("--model", a->o.model, "quantized model file")->required();
  cmd->add_option("--data", a->o.data, "data set NAME[:PATH] (training images: the set D)")
      ->required()
      ->check(data_validator());
  cmd->add_option("--out", a->o.out, "results directory")->required();
  cmd->add_option("--images", a->o.images, "|D|: the first N training images")->capture_default_str();
  cmd->add_option("--batch", a->o.relevance.batch, "images propagated at once")->capture_default_str();
  cmd->add_option("--input-rule", a->input_rule,
                  "rule of the layers that read the network input: " + join(input_rule_names()))
      ->check(CLI::IsMember(input_rule_names()))
      ->capture_default_str();
  auto* campaign = cmd->add_option(
      "--campaign", a->o.campaigns,
      "results directory of an exhaustive campaign (flipguard inject) to compare with; several "
      "for a campaign split by --sites (each site from the one that holds it)");
  cmd->add_option("--baseline", a->o.baseline,
                  "results directory of `analyze --campaign` on the model before feature "
                  "optimization: per site, how the measured rates changed and how the change "
                  "follows eq. 6")
      ->needs(campaign);
  cmd->add_option("--top-k", a->o.top_k, "features compared by top-k overlap")->capture_default_str();
  cmd->callback([&action, a] { action = [a] { run_analyze(*a); }; });
}

}  // namespace flipguard::cli
