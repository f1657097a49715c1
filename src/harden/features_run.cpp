/// \file
/// A whole run of Algorithm 1: checkpoints and resume, the hardened model file, features.json and
/// Fig. 5.
#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/json_read.hpp>

#include <cstdio>
#include <filesystem>
#include <sstream>

namespace flipguard {

nlohmann::json to_json(const FeatureIteration& it) {
  return {{"iteration", it.iteration},
          {"quantized_accuracy", it.quantized_accuracy},
          {"float_accuracy", it.float_accuracy},
          {"mean_sd", it.mean_sd},
          {"sites", it.sites},
          {"site_sd", it.site_sd},
          {"finetune_train_accuracy",
           it.finetune_train_accuracy < 0 ? nlohmann::json(nullptr)
                                          : nlohmann::json(it.finetune_train_accuracy)},
          {"seconds", it.seconds}};
}

FeatureIteration feature_iteration_from_json(const nlohmann::json& j, const std::string& where) {
  auto number = [&](const char* key) { return json_number(json_member(j, key, where), key, where); };
  FeatureIteration it;
  it.iteration = static_cast<int>(
      json_whole(json_member(j, "iteration", where), "iteration", where, 0, 1 << 20));
  it.quantized_accuracy = number("quantized_accuracy");
  it.float_accuracy = number("float_accuracy");
  it.mean_sd = number("mean_sd");
  for (int64_t b : json_wholes(json_member(j, "sites", where), "sites", where, 0, 1 << 30))
    it.sites.push_back(static_cast<int>(b));
  it.site_sd = json_numbers(json_member(j, "site_sd", where), "site_sd", where);
  const nlohmann::json& f = json_member(j, "finetune_train_accuracy", where);
  it.finetune_train_accuracy = f.is_null() ? -1 : json_number(f, "finetune_train_accuracy", where);
  it.seconds = number("seconds");
  return it;
}

namespace {

nlohmann::json history_json(const std::vector<FeatureIteration>& history) {
  nlohmann::json h = nlohmann::json::array();
  for (const auto& it : history) h.push_back(to_json(it));
  return h;
}

}  // namespace

std::string features_signature(const FeatureRunOptions& r) {
  const FeatureOptions& o = r.features;
  // The keys are those of the first checkpoints (the command line's options), so that their
  // runs can still be resumed.
  std::ostringstream s;
  s << "from=" << r.from << " data=" << r.data << " relevance_images=" << o.relevance_images
    << " input_rule=" << to_string(o.relevance.input_rule)
    << " calibration_images=" << o.quant.calibration_images
    << " finetune_epochs=" << o.finetune.epochs << " lr=" << o.finetune.lr
    << " batch=" << o.finetune.batch_size << " wd=" << o.finetune.weight_decay
    << " augment=" << r.augment << " seed=" << o.finetune.seed
    << " until=" << (o.until_baseline ? "float-baseline" : "") << " limit=" << r.train_images
    << " test_images=" << r.test_images;
  if (!o.quant.refine) s << " refine=0";
  if (r.distill) s << " target=teacher temperature=" << o.finetune.temperature;
  return s.str();
}

std::string feature_report_dir(const std::string& out) {
  std::filesystem::path p(out);
  return (p.parent_path() / (p.stem().string() + ".features")).string();
}

void save_feature_checkpoint(const std::string& path, const FeatureState& st, double baseline,
                             const std::string& signature, const nlohmann::json& meta) {
  Model c{st.net, st.formats, meta};
  c.meta["features_state"] = {{"signature", signature}, {"done", st.done},
                              {"baseline", baseline}, {"history", history_json(st.history)}};
  save_model(c, path);
}

FeatureState load_feature_checkpoint(const std::string& path, const std::string& signature,
                                     double& baseline) {
  const Model c = load_model(path);
  const nlohmann::json* state = json_find(c.meta, "features_state");
  if (!state || !state->is_object() || !c.quant)
    fail("cannot resume: '", path, "' is not a feature-optimization checkpoint");
  const nlohmann::json& j = *state;
  const std::string where = "feature-optimization checkpoint '" + path + "'";
  const std::string written_by = json_string(json_member(j, "signature", where), "signature", where);
  if (written_by != signature)
    fail("cannot resume from '", path, "': it was written by a run with other options (",
         written_by, "), this run is ", signature);
  FeatureState st;
  st.net = c.net;
  st.formats = *c.quant;
  st.done = static_cast<int>(json_whole(json_member(j, "done", where), "done", where, 0, 1 << 20));
  baseline = json_number(json_member(j, "baseline", where), "baseline", where);
  const nlohmann::json& history = json_member(j, "history", where);
  if (!history.is_array()) fail(where, ": history is not an array");
  for (const auto& it : history) st.history.push_back(feature_iteration_from_json(it, where));
  return st;
}

Plot feature_accuracy_plot(const std::vector<FeatureIteration>& history, double baseline) {
  Plot p;
  p.title = "Fig. 5a: 8-bit test accuracy right after each adjustment";
  p.xlabel = "iteration";
  p.ylabel = "test accuracy (%)";
  Series acc{"8-bit, after the adjustment", {}, {}, {}, {}, "linespoints"};
  Series base{"float baseline (original model)", {}, {}, {}, {}, "lines"};
  for (const FeatureIteration& it : history) {
    acc.x.push_back(it.iteration);
    acc.y.push_back(100 * it.quantized_accuracy);
    base.x.push_back(it.iteration);
    base.y.push_back(100 * baseline);
  }
  p.series = {acc, base};
  return p;
}

Plot feature_spread_plot(const std::vector<FeatureIteration>& history) {
  Plot p;
  p.title = "Fig. 5b: mean over sites of SD(eta / mean(eta))";
  p.xlabel = "iteration";
  p.ylabel = "mean SD of normalized criticality";
  Series sd{"after the adjustment", {}, {}, {}, {}, "linespoints"};
  for (const FeatureIteration& it : history) {
    sd.x.push_back(it.iteration);
    sd.y.push_back(it.mean_sd);
  }
  p.series = {sd};
  return p;
}

FeatureRun harden_features(const Model& m, const Dataset& all_train, const Dataset& all_test,
                           FeatureRunOptions r,
                           const std::function<void(const std::string&)>& log) {
  if (all_train.size() == 0)
    fail("feature optimization of '", r.from, "': no training images; expected a data set to "
         "fine-tune on");
  const Dataset train = all_train.head(r.train_images);
  const Dataset test = all_test.head(r.test_images);
  check_images(m.net, test.images, test.name);
  FeatureOptions& o = r.features;
  set_augment(r.augment, train.name, o.finetune);
  if (r.distill) o.finetune.teacher = m.net;
  FeatureRun run;
  run.checkpoint = r.checkpoint.empty() ? r.out + ".ckpt" : r.checkpoint;
  run.report_dir = r.report_dir.empty() ? feature_report_dir(r.out) : r.report_dir;
  const std::string signature = features_signature(r);

  if (m.quant) {  // re-calibration keeps the input model's word length and signedness
    o.quant.bits = m.quant->input.bits;
    o.quant.is_signed = m.quant->act.empty() || m.quant->act.front().is_signed;
  }
  FeatureState st;
  if (r.resume) {
    st = load_feature_checkpoint(run.checkpoint, signature, o.baseline);
    if (st.done >= o.iterations)
      fail("cannot resume: the checkpoint has ", st.done, " fine-tuned iterations, iterations ",
           o.iterations, " would have ended before the last of them");
    log("resumed from " + run.checkpoint + " after iteration " + std::to_string(st.done));
  } else {
    st.net = m.net;
    o.baseline = float_accuracy(m.net, test.images, test.labels);
    if (m.quant) {
      st.formats = *m.quant;
    } else {
      log("'" + r.from + "' is a float model: quantizing it first (" +
          std::to_string(o.quant.bits) + "-bit, signed)");
      QuantOptions quant = o.quant;
      quant.progress = prefixed(o.progress, "input model: ");
      st.formats = calibrate(m.net, train.head(o.quant.calibration_images).images, quant);
    }
  }
  char line[200];
  std::snprintf(line, sizeof line,
                "feature optimization of %s: float baseline %.2f%% on %lld test images, %d "
                "iteration%s%s",
                m.net.arch.c_str(), 100 * o.baseline, (long long)test.size(), o.iterations,
                o.iterations == 1 ? "" : "s", o.until_baseline ? " at most" : "");
  log(line);

  st = optimize_features(std::move(st), train, test, o, log, [&](const FeatureState& s) {
    save_feature_checkpoint(run.checkpoint, s, o.baseline, signature, m.meta);
  });

  const FeatureIteration& last = st.history.back();
  const FeatureIteration& first = st.history.front();
  run.baseline = o.baseline;
  run.reached = last.quantized_accuracy >= o.baseline;
  run.summary = {
      {"method", "features"},
      {"command", r.command},
      {"from", r.from},
      {"data", train.name},
      {"iterations", st.done},
      {"until_accuracy",
       o.until_baseline ? nlohmann::json("float-baseline") : nlohmann::json(nullptr)},
      {"float_baseline", o.baseline},
      {"reached_baseline", run.reached},
      {"quantized_accuracy_before", first.quantized_accuracy},
      {"quantized_accuracy_after", last.quantized_accuracy},
      {"mean_sd_before", first.mean_sd},
      {"mean_sd_after", last.mean_sd},
      {"relevance_images", std::min(o.relevance_images, train.size())},
      {"train_images", train.size()},
      {"test_images", test.size()},
      {"finetune",
       {{"epochs", o.finetune.epochs},
        {"lr", o.finetune.lr},
        {"batch_size", o.finetune.batch_size},
        {"weight_decay", o.finetune.weight_decay},
        {"augment", r.augment},
        {"target", r.distill ? "teacher" : "labels"},
        {"temperature", o.finetune.teacher ? nlohmann::json(o.finetune.temperature)
                                           : nlohmann::json(nullptr)},
        {"gradient", "straight-through through the rounding, zero where saturated"}}},
      {"history", history_json(st.history)}};
  // Only where there are any, so that the record of a network without additions is unchanged.
  if (const std::vector<int> kept = shortcut_sites(st.net); !kept.empty())
    run.summary["shortcut_sites_not_adjusted"] = kept;
  Model out{st.net, st.formats, m.meta};
  out.meta["harden"] = run.summary;
  out.meta["float_test_accuracy"] = last.float_accuracy;
  out.meta["quantized_test_accuracy"] = last.quantized_accuracy;

  std::filesystem::create_directories(run.report_dir);
  const std::filesystem::path dir(run.report_dir);
  nlohmann::json rep = run.summary;
  rep["model"] = r.out;
  std::string why = render_plot(feature_accuracy_plot(st.history, o.baseline),
                                (dir / "fig5a_accuracy.gp").string(),
                                (dir / "fig5a_accuracy.svg").string());
  if (!why.empty()) log("warning: fig5a_accuracy.svg not rendered: " + why);
  why = render_plot(feature_spread_plot(st.history), (dir / "fig5b_criticality_sd.gp").string(),
                    (dir / "fig5b_criticality_sd.svg").string());
  if (!why.empty()) log("warning: fig5b_criticality_sd.svg not rendered: " + why);
  rep["figures"] = {"fig5a_accuracy.svg", "fig5b_criticality_sd.svg"};
  save_model(out, r.out);
  write_json((dir / "features.json").string(), rep);
  run.short_of_baseline = o.until_baseline && !run.reached;
  std::error_code ec;
  if (!run.short_of_baseline) std::filesystem::remove(run.checkpoint, ec);
  run.state = std::move(st);
  return run;
}

}  // namespace flipguard
