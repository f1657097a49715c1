// flipguard inject: fault-injection campaigns on a quantized model (sections V-C, V-D).
#include "cli.hpp"
#include "progress.hpp"

#include <flipguard/campaign.hpp>
#include <flipguard/distributed.hpp>
#include <flipguard/error.hpp>
#include <flipguard/interrupt.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/report.hpp>
#include <flipguard/version.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>

namespace flipguard::cli {

namespace {

struct InjectArgs {
  std::string model, data, out, bit = "msb", target = "activations", engine = "cone", faults;
  int64_t images = 0, chunk = 1000, golden_memory = 2048;
  int workers = 0;
  bool no_prune = false;
  bool resume = false;
  double checkpoint_seconds = 60, bin_width = 0;
  CampaignOptions o;
  // Limited exhaustive campaign (the paper's ILSVRC campaign, V-E2).
  int64_t top_features = 0, positions = 0, relevance_images = 1000;
};

/// --top-features K --positions P: the neurons of the limited exhaustive campaign, chosen on the
/// first --relevance-images training images; sets o.sites and o.elements and returns the choice
/// for the summary.
nlohmann::json select_neurons(const InjectArgs& a, const QuantizedNetwork& q, const DataSpec& spec,
                              CampaignOptions& o) {
  const Dataset train = load_dataset(spec, Split::Train).head(a.relevance_images);
  check_images(q.network(), train.images, train.name);
  log("relevance of " + std::to_string(train.size()) + " training images for the " +
      std::to_string(a.top_features) + " most critical feature maps (eq. 5)");
  const CriticalNeurons c =
      select_critical_neurons(q, train.images, train.labels, a.top_features, a.positions, o.seed);
  o.sites = c.sites;
  o.elements = c.elements;
  for (size_t i = 0; i < c.features.size(); ++i) {
    const CriticalNeuronsFeature& f = c.features[i];
    log("feature map " + std::to_string(i + 1) + ": site " + std::to_string(f.site) + " (" +
        q.network().blocks[f.site].name + ") channel " + std::to_string(f.channel) + ", eta " +
        format_number(f.eta) + ", " + std::to_string(f.positions) + " positions");
  }
  return selection_json(c, q.network(), a.top_features, a.positions, train.size());
}

}  // namespace

void add_inject(CLI::App& app, Action& action) {
  auto a = std::make_shared<InjectArgs>();
  auto* cmd = app.add_subcommand("inject", "bit-flip fault-injection campaign on a quantized model");
  cmd->add_option("--model", a->model, "quantized model file")->required();
  cmd->add_option("--data", a->data, "data set NAME[:PATH] (test images)")->required()->check(data_validator());
  cmd->add_option("--campaign", a->o.campaign, "exhaustive, sampled or ber (list: with --faults)")
      ->check(CLI::IsMember(campaign_names()))
      ->capture_default_str();
  cmd->add_option("--faults", a->faults,
                  "replay these faults, one fault set each: a CSV with columns block, index, bit "
                  "(a campaign's samples.csv or faults.csv as is) or a .npy of (n, 3) integers")
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "results directory")->required();
  cmd->add_option("--target", a->target, "activations or weights")
      ->check(CLI::IsMember({"activations", "weights"}))
      ->capture_default_str();
  cmd->add_option("--sites", a->o.sites,
                  "sites (as `flipguard zoo` lists them; with --target weights: block indices), "
                  "comma-separated; default all")
      ->delimiter(',')
      ->check(at_least(0));
  cmd->add_option("--bit", a->bit, "exhaustive: msb, all, or a bit position (0 = LSB)")->capture_default_str();
  cmd->add_option("--images", a->images, "the first N test images (0: all)")->check(at_least(0));
  cmd->add_option("--error", a->o.error, "sampled: margin of error e")->capture_default_str();
  cmd->add_option("--confidence", a->o.confidence, "sampled, ber: confidence level")->capture_default_str();
  cmd->add_option("--ber", a->o.ber, "ber: bit error rates, comma-separated")->delimiter(',');
  cmd->add_option("--runs", a->o.runs, "ber: runs per bit error rate")->check(at_least(1))->capture_default_str();
  cmd->add_option("--seed", a->o.seed, "seed of the random draws")
      ->check(at_least(0))->capture_default_str();
  cmd->add_option("--engine", a->engine, "evaluation engine")
      ->check(CLI::IsMember(engine_names()))
      ->capture_default_str();
  cmd->add_flag("--no-prune", a->no_prune,
                "cone engine: compute every image exactly, without the bound that skips images "
                "which cannot fail (same results, slower)");
  cmd->add_option("--chunk", a->chunk, "images per batch")->check(at_least(1))->capture_default_str();
  cmd->add_option("--golden-memory", a->golden_memory,
                  "MiB the golden run's stored codes may take; more images run in chunks, each "
                  "with its own golden run (same results; 0: no limit)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--workers", a->workers,
                  "threads: fault sets evaluated at once, or (cone engine) images (0: one per core, as "
                  "--threads)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--top-features", a->top_features,
                  "exhaustive: only the K feature maps with the highest criticality (eq. 5) over "
                  "all sites, as the paper's ILSVRC campaign (with --positions)")
      ->check(at_least(1));
  cmd->add_option("--positions", a->positions,
                  "exhaustive with --top-features: neurons drawn in each of those maps (seeded "
                  "by --seed; all of a smaller map)")
      ->check(at_least(1));
  cmd->add_option("--relevance-images", a->relevance_images,
                  "with --top-features: training images for the relevance (eq. 3)")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_flag("--resume", a->resume, "continue the campaign checkpointed in --out");
  cmd->add_option("--checkpoint-every", a->checkpoint_seconds, "seconds between checkpoints")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--bin-width", a->bin_width,
                  "histogram bin width (a failure-rate fraction; 0: 1, 2 or 5 times a power of ten, "
                  "at most 25 bins up to the worst rate and no finer than one image)")
      ->capture_default_str();
  cmd->callback([&action, a] {
    action = [a] {
      CampaignOptions o = a->o;
      parse_bit(a->bit, o);
      if (!a->faults.empty()) {
        if ((o.campaign != "exhaustive" && o.campaign != "list") || !o.sites.empty() ||
            a->bit != "msb" || a->top_features > 0)
          fail("--faults names the faults itself: leave out --campaign, --sites, --bit and "
               "--top-features");
        o.campaign = "list";
        o.faults = read_fault_list(a->faults);
      } else if (o.campaign == "list") {
        fail("--campaign list replays the faults of --faults FILE: give the file");
      }
      o.target = a->target == "weights" ? FaultTarget::Weights : FaultTarget::Activations;
      if (o.campaign != "exhaustive" && a->bit != "msb")
        fail("--bit is for exhaustive campaigns; a ", o.campaign, " campaign draws the bits");
      if (!(a->bin_width >= 0 && a->bin_width <= 1))
        fail("--bin-width ", a->bin_width, ": expected a fraction in (0, 1], or 0 for automatic");
      const Model m = load_model(a->model);
      if (!m.quant)
        fail("model '", a->model, "' is not quantized: run `flipguard quantize` on it first");
      const DataSpec spec = parse_data_spec(a->data);
      const Dataset test = load_dataset(spec, Split::Test).head(a->images);
      check_images(m.net, test.images, test.name);
      const QuantizedNetwork q(m.net, *m.quant);
      if ((a->top_features > 0) != (a->positions > 0))
        fail("--top-features and --positions go together (e.g. --top-features 4 --positions 48)");
      nlohmann::json selection;
      if (a->top_features > 0) {
        if (o.campaign != "exhaustive" || o.target != FaultTarget::Activations)
          fail("--top-features limits an exhaustive campaign on activations; this one is ",
               o.campaign, " on ", a->target);
        if (!o.sites.empty()) fail("--top-features chooses the sites itself: leave out --sites");
        selection = select_neurons(*a, q, spec, o);
      }
      const CampaignPlan plan(q, o);

      namespace fs = std::filesystem;
      fs::create_directories(a->out);
      // Under mpirun each process evaluates every K-th fault set and checkpoints its own share.
      const int rank = dist_rank(), ranks = dist_size();
      const bool lead = rank == 0;
      const std::string checkpoint = campaign_checkpoint_path(a->out, rank, ranks);
      const int64_t golden_bytes = a->golden_memory << 20;
      const int64_t chunks = golden_chunks(q, test.size(), golden_bytes).first;
      {
        // This process's checkpoints: one, or one per chunk of images.
        std::set<std::string> mine;
        for (int64_t k = 0; k < chunks; ++k)
          mine.insert(fs::path(chunk_checkpoint_path(checkpoint, k, chunks)).filename().string());
        const std::string stem = fs::path(checkpoint).stem().string();
        bool found = false;
        for (const auto& e : fs::directory_iterator(a->out)) {
          const std::string name = e.path().filename().string();
          if (name != fs::path(checkpoint).filename().string() && name.rfind(stem + ".chunk", 0) != 0)
            continue;
          if (!a->resume)
            fail("'", a->out, "' holds the checkpoint of an unfinished campaign: pass --resume ",
                 "to continue it, or remove ", e.path().string());
          if (!mine.count(name))
            fail("cannot resume from ", e.path().string(), ": that run split its golden run ",
                 "differently (this one: ", chunks, " chunk(s) of at most ", a->golden_memory,
                 " MiB); pass the --golden-memory it was started with");
          found = true;
        }
        if (a->resume && !found && lead)
          log("no checkpoint in '" + a->out + "' to resume from (the run before stopped before " +
              "its first, or finished): the campaign starts from the beginning");
      }
      // What decides the fault sets and their results; chunk and bin width do not.
      nlohmann::json campaign_opts = {{"sites", o.sites}, {"bit", a->bit},
                                      {"images", a->images}, {"error", o.error},
                                      {"confidence", o.confidence}, {"ber", o.ber},
                                      {"runs", o.runs}};
      if (!selection.is_null()) campaign_opts["elements"] = o.elements;
      if (!a->faults.empty())
        campaign_opts["faults"] = {{"file", a->faults},
                                   {"crc32", file_crc32(a->faults, "fault list")},
                                   {"count", o.faults.size()}};
      nlohmann::json opts = campaign_opts;
      opts["chunk"] = a->chunk;
      opts["bin_width"] = a->bin_width;
      RunOptions r;
      r.checkpoint = checkpoint;
      r.checkpoint_seconds = a->checkpoint_seconds;
      r.workers = a->workers > 0 ? a->workers : torch::get_num_threads();
      r.resume = a->resume;
      r.rank = rank;
      r.ranks = ranks;
      r.fingerprint = {{"model_crc32", file_crc32(a->model, "model file")},
                       {"data", spec.name},
                       {"images", test.size()},
                       {"campaign", o.campaign},
                       {"target", a->target},
                       {"seed", o.seed},
                       {"options", campaign_opts},
                       {"rank", rank},
                       {"ranks", ranks}};
      // The first process speaks for all: its share progresses like the others'.
      const std::string whose = ranks > 1 ? ", process 0's share" : "";
      auto line = std::make_shared<ProgressLine>("campaign", "fault sets");
      r.progress = [line, whose](const CampaignProgress& p) {
        char detail[96];
        std::snprintf(detail, sizeof detail, ", %.0f evaluations/s%s", p.evaluations_per_second,
                      whose.c_str());
        line->update(static_cast<double>(p.done), static_cast<double>(p.total), detail,
                     p.seconds_left);
      };

      ImageCampaignOptions io;
      io.engine = a->engine;
      io.engine_options.chunk = a->chunk;
      io.engine_options.prune = !a->no_prune;
      io.run = r;
      io.golden_bytes = golden_bytes;
      if (lead)
        log("golden run of " + m.net.arch + " on " + std::to_string(test.size()) + " " +
            spec.name + " test images" +
            " (" + format_bytes(GoldenRun::bytes_per_image(q)) + " of codes per image" +
            (chunks > 1 ? ", in " + std::to_string(chunks) + " chunks by --golden-memory)" : ")") +
            (ranks > 1 ? " in each of " + std::to_string(ranks) + " processes" : ""));
      io.progress = phase_lines();
      ConeStats cone;  // summed over the chunks
      bool is_cone = false;
      io.on_engine = [&](const Engine& e) {
        if (const auto* c = dynamic_cast<const ConeEngine*>(&e)) {
          is_cone = true;
          const ConeStats st = c->stats();
          cone.pairs += st.pairs;
          cone.vanished += st.vanished;
          cone.pruned += st.pruned;
          cone.scored += st.scored;
        }
      };
      if (lead)
        log(std::to_string(plan.size()) + " fault sets (" + o.campaign + ", " +
            to_string(o.target) + ")");
      // SIGINT and SIGTERM stop the campaign at its next step (about a second) with a checkpoint.
      std::optional<StopScope> stoppable(std::in_place);
      io.run.stop = [] { return stop_signal() != 0; };
      ImageCampaign run = run_image_campaign(plan, q, test.images, test.labels, io);
      stoppable.reset();
      CampaignCounts& counts = run.counts;
      int64_t mine_done = 0, mine = 0;  // this process's fault sets
      for (size_t i = 0; i < counts.failures.size(); ++i)
        if (static_cast<int64_t>(i) % ranks == rank) {
          ++mine;
          mine_done += counts.failures[i] >= 0;
        }
      // Each fault set was counted by one process and is -1 in the others.
      dist_max(counts.failures);
      counts.seconds = dist_max(counts.seconds);
      if (!counts.complete()) {
        if (const int sig = stop_signal())
          throw Stopped(sig, "stopped by " + signal_name(sig) + ": " + std::to_string(mine_done) +
                                 " of " + std::to_string(mine) + " fault sets finished, " +
                                 "the others' counts so far kept in " + join(run.checkpoints) +
                                 "; continue with --resume");
        fail("campaign stopped before its end; continue with --resume");
      }
      {
        int64_t evaluated = 0;  // this process's share
        for (size_t i = 0; i < counts.failures.size(); ++i)
          evaluated += static_cast<int64_t>(i) % ranks == rank;
        line->finish(static_cast<double>(evaluated), static_cast<double>(evaluated));
      }
      char acc[32];
      std::snprintf(acc, sizeof acc, "%.2f", 100 * run.golden.accuracy());
      if (lead)
        log("golden accuracy " + std::string(acc) + " %: " + std::to_string(run.golden.correct) +
            " correct images");
      nlohmann::json meta = {{"model", a->model},   {"arch", m.net.arch},
                             {"data", spec.name},   {"engine", a->engine},
                             {"options", opts},     {"command", command_line()},
                             {"config", recipe()},  {"flipguard", build_info()}};
      if (is_cone) {
        std::vector<int64_t> pairs{cone.pairs, cone.vanished, cone.pruned, cone.scored};
        dist_sum(pairs);
        meta["cone_pairs"] = {{"note", "(fault set, image) pairs of this run (not of earlier, "
                                       "resumed processes)"},
                              {"evaluated", pairs[0]}, {"vanished", pairs[1]},
                              {"pruned", pairs[2]},    {"scored", pairs[3]}};
      }
      meta["processes"] = ranks;
      meta["golden_chunks"] = {{"chunks", run.chunks}, {"images_each", run.chunk_images}};
      if (!selection.is_null()) meta["selection"] = selection;
      if (lead) {
        std::vector<std::string> warnings;
        ProgressLine writing("writing results", "campaigns");
        writing.update(0, 1);
        const auto summary =
            write_campaign_results(a->out, plan, counts, run.golden, meta, a->bin_width, warnings);
        writing.finish(1, 1);
        for (const auto& w : warnings) log("warning: " + w);
        print_campaign_summary(summary);
        std::printf("results in %s\n", a->out.c_str());
      }
      // The checkpoints go only once the results are written.
      dist_barrier();
      for (const std::string& c : run.checkpoints) {
        fs::remove(c);
        remove_stale_temporaries(c);  // of processes killed while they wrote it
      }
    };
  });
}

}  // namespace flipguard::cli
