// Campaigns: fault spaces, sample sizes, seeded draws, the resumable campaign loop, statistics.
#include <flipguard/campaign.hpp>
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/limits.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/parallel.hpp>
#include <flipguard/report.hpp>

#include "checkpoint.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

namespace flipguard {

using namespace checkpoint_detail;

const std::vector<std::string>& campaign_names() {
  static const std::vector<std::string> names{"exhaustive", "sampled", "ber", "list"};
  return names;
}

void parse_bit(const std::string& choice, CampaignOptions& o) {
  if (choice == "msb") {
    o.bits = BitChoice::Msb;
  } else if (choice == "all") {
    o.bits = BitChoice::All;
  } else {
    try {
      size_t used = 0;
      o.bit = std::stoi(choice, &used);
      if (used != choice.size()) throw std::invalid_argument(choice);
    } catch (const std::exception&) {
      fail("bit '", choice, "': expected msb, all or a bit position (0 is the LSB)");
    }
    o.bits = BitChoice::One;
  }
}

int64_t FaultSpace::elements() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.size;
  return n;
}

int64_t FaultSpace::positions() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.size * t.bits;
  return n;
}

Fault FaultSpace::at(int64_t position) const {
  if (position < 0 || position >= positions())
    fail("bit position ", position, ": expected 0..", positions() - 1);
  auto it = std::upper_bound(tensors.begin(), tensors.end(), position,
                             [](int64_t p, const Tensor& t) { return p < t.first_position; });
  const Tensor& t = *(it - 1);
  const int64_t local = position - t.first_position;
  return {t.block, local / t.bits, static_cast<int>(local % t.bits)};
}

Fault FaultSpace::element(int64_t element, int bit) const {
  if (element < 0 || element >= elements())
    fail("element ", element, ": expected 0..", elements() - 1);
  auto it = std::upper_bound(tensors.begin(), tensors.end(), element,
                             [](int64_t e, const Tensor& t) { return e < t.offset; });
  const Tensor& t = *(it - 1);
  if (bit >= t.bits) fail("bit ", bit, " of ", t.name, "'s ", t.bits, "-bit codes: expected 0..", t.bits - 1);
  return {t.block, element - t.offset, bit < 0 ? t.bits - 1 : bit};
}

size_t FaultSpace::tensor_of(int block) const {
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].block == block) return i;
  fail("block ", block, " is not in the fault space");
}

FaultSpace fault_space(const QuantizedNetwork& q, FaultTarget target, const std::vector<int>& sites) {
  const Network& net = q.network();
  const auto shapes = net.shapes();
  std::vector<int> valid;
  if (target == FaultTarget::Activations) {
    valid = net.sites();
  } else {
    for (size_t b = 0; b < net.blocks.size(); ++b)
      if (net.blocks[b].weighted()) valid.push_back(static_cast<int>(b));
  }
  std::vector<int> chosen = sites.empty() ? valid : sites;
  std::sort(chosen.begin(), chosen.end());
  if (std::adjacent_find(chosen.begin(), chosen.end()) != chosen.end())
    fail("sites lists a ", target == FaultTarget::Activations ? "site" : "block", " twice");
  FaultSpace space;
  space.target = target;
  for (int b : chosen) {
    if (std::find(valid.begin(), valid.end(), b) == valid.end()) {
      const std::string list = join(valid, ",");
      if (target == FaultTarget::Activations)
        fail("site ", b, " does not exist: ", net.arch, " has sites ", list);
      fail("block ", b, " has no weights: the weighted blocks of ", net.arch, " are ", list);
    }
    FaultSpace::Tensor t;
    t.block = b;
    t.name = net.blocks[b].name;
    if (target == FaultTarget::Activations) {
      t.shape = {shapes[b].c, shapes[b].h, shapes[b].w};
      t.size = shapes[b].numel();
      t.bits = q.formats().act[b].bits;
    } else {
      t.shape = net.blocks[b].weight.sizes().vec();
      t.size = net.blocks[b].weight.numel();
      t.bits = q.formats().weight[b].bits;
    }
    t.offset = space.elements();
    t.first_position = space.positions();
    space.tensors.push_back(t);
  }
  return space;
}

double normal_quantile(double confidence) {
  if (!(confidence > 0 && confidence < 1))
    fail("confidence ", confidence, ": expected a level strictly between 0 and 1");
  // P(|Z| < t) = erf(t / sqrt 2) is increasing in t: bisect.
  double lo = 0, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    (std::erf(mid / std::sqrt(2.0)) < confidence ? lo : hi) = mid;
  }
  return (lo + hi) / 2;
}

int64_t leveugle_sample_size(int64_t population, double error, double confidence, double p) {
  if (population < 1) fail("sample size: population of ", population, ", expected at least 1");
  if (!(error > 0 && error < 1)) fail("error ", error, ": expected a margin in (0, 1)");
  if (!(p > 0 && p < 1)) fail("proportion p = ", p, ": expected a value in (0, 1)");
  const double t = normal_quantile(confidence);
  const double n = population / (1 + error * error * (population - 1) / (t * t * p * (1 - p)));
  // Guard the rounding up against float noise just above an integer.
  return std::min<int64_t>(population, static_cast<int64_t>(std::ceil(n - 1e-9)));
}

uint64_t Rng::next() {
  uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Rng::below(uint64_t n) {
  if (n == 0) fail("uniform draw below 0");
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do x = next(); while (x >= limit);
  return x % n;
}

double Rng::uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }

uint64_t derive_seed(uint64_t seed, uint64_t index) {
  Rng r(seed ^ (index * 0xD1B54A32D192ED03ull));
  r.next();
  return r.next();
}

int64_t draw_binomial(int64_t n, double p, Rng& rng) {
  if (!(p >= 0 && p <= 1)) fail("probability ", p, ": expected a value in [0, 1]");
  if (p == 0 || n == 0) return 0;
  if (p == 1) return n;
  // The gaps between successes of independent trials are geometric: count how many fit in n.
  const double log_q = std::log1p(-p);
  int64_t k = 0;
  double pos = -1;
  for (;;) {
    pos += std::floor(std::log(rng.uniform()) / log_q) + 1;
    if (pos >= static_cast<double>(n)) return k;
    ++k;
  }
}

std::vector<int64_t> draw_distinct(int64_t n, int64_t k, Rng& rng) {
  if (k < 0 || k > n) fail("drawing ", k, " distinct positions out of ", n);
  std::unordered_set<int64_t> chosen;
  chosen.reserve(static_cast<size_t>(k) * 2);
  for (int64_t j = n - k; j < n; ++j) {
    const int64_t t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j + 1)));
    chosen.insert(chosen.count(t) ? j : t);
  }
  std::vector<int64_t> out(chosen.begin(), chosen.end());
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

/// The sites of a campaign: those the options name, or for a list those its faults name, each
/// checked against the network (the row of a fault that names no site, element or bit of it).
std::vector<int> campaign_sites(const QuantizedNetwork& q, const CampaignOptions& o) {
  if (o.campaign != "list") return o.sites;
  if (!o.sites.empty()) fail("a list campaign takes its sites from its faults: expected no sites");
  if (o.faults.empty()) fail("list campaign: expected at least one fault");
  const FaultSpace all = fault_space(q, o.target, {});
  const std::string what = o.target == FaultTarget::Weights ? "weighted block" : "site";
  std::set<int> sites;
  for (size_t i = 0; i < o.faults.size(); ++i) {
    const Fault& f = o.faults[i];
    const auto t = std::find_if(all.tensors.begin(), all.tensors.end(),
                                [&](const FaultSpace::Tensor& x) { return x.block == f.block; });
    if (t == all.tensors.end()) {
      std::vector<int> valid;
      for (const auto& x : all.tensors) valid.push_back(x.block);
      fail("fault ", i, " of the list: block ", f.block, " is not a ", what, " of ",
           q.network().arch, "; expected one of ", join(valid));
    }
    if (f.index < 0 || f.index >= t->size)
      fail("fault ", i, " of the list: index ", f.index, " outside ", what, " ", f.block, " ('",
           t->name, "', ", t->size, " elements); expected 0..", t->size - 1);
    if (f.bit < 0 || f.bit >= t->bits)
      fail("fault ", i, " of the list: bit ", f.bit, " of ", what, " ", f.block, " ('", t->name,
           "', ", t->bits, "-bit codes); expected 0..", t->bits - 1);
    sites.insert(f.block);
  }
  return {sites.begin(), sites.end()};
}

}  // namespace

CampaignPlan::CampaignPlan(const QuantizedNetwork& q, const CampaignOptions& o)
    : o_(o), space_(fault_space(q, o.target, campaign_sites(q, o))) {
  const auto& names = campaign_names();
  if (std::find(names.begin(), names.end(), o_.campaign) == names.end()) {
    fail("unknown campaign '", o_.campaign, "': expected one of ", join(names));
  }
  if (o_.campaign == "exhaustive") {
    if (o_.bits == BitChoice::One)
      for (const auto& t : space_.tensors)
        if (o_.bit < 0 || o_.bit >= t.bits)
          fail("bit ", o_.bit, ": ", t.name, " has ", t.bits, "-bit codes, expected 0..",
               t.bits - 1);
    for (size_t i = 0; i < o_.elements.size(); ++i)
      if (o_.elements[i] < 0 || o_.elements[i] >= space_.elements() ||
          (i > 0 && o_.elements[i] <= o_.elements[i - 1]))
        fail("selected element ", o_.elements[i], " (", i, "th): expected strictly increasing "
             "elements in 0..", space_.elements() - 1);
    if (!o_.elements.empty() && o_.bits == BitChoice::All)
      for (const auto& t : space_.tensors)
        if (t.bits != space_.tensors.front().bits)
          fail(
              "bits all (every bit position) over selected elements needs one word length in every "
              "tensor");
    if (!o_.elements.empty())
      size_ = static_cast<int64_t>(o_.elements.size()) * bits_per_element();
    else
      size_ = o_.bits == BitChoice::All ? space_.positions() : space_.elements();
  } else if (o_.campaign == "list") {
    size_ = static_cast<int64_t>(o_.faults.size());  // checked by campaign_sites
  } else if (o_.campaign == "sampled") {
    normal_quantile(o_.confidence);
    const int64_t n = leveugle_sample_size(space_.positions(), o_.error, o_.confidence, o_.p);
    Rng rng(derive_seed(o_.seed, 0));
    samples_ = draw_distinct(space_.positions(), n, rng);
    size_ = n;
  } else {
    normal_quantile(o_.confidence);
    if (o_.ber.empty()) fail("ber: expected at least one bit error rate");
    for (double b : o_.ber)
      if (!(b > 0 && b <= 1)) fail("ber ", b, ": expected a bit error rate in (0, 1]");
    if (o_.runs < 1) fail("runs ", o_.runs, ": expected at least 1");
    if (o_.runs > kMaxFaultSets)
      fail("runs ", o_.runs, ": expected at most ", kMaxFaultSets / static_cast<int64_t>(o_.ber.size()),
           " for ", o_.ber.size(), " bit error rates (", kMaxFaultSets,
           " fault sets in all: each is held in memory while the campaign runs)");
    size_ = static_cast<int64_t>(o_.ber.size()) * o_.runs;
  }
  if (size_ > kMaxFaultSets)
    fail("a ", o_.campaign, " campaign of ", size_, " fault sets: expected at most ", kMaxFaultSets,
         " (each is held in memory while the campaign runs, ~100 bytes); split it, by sites or "
         "into fault lists, and run the parts one after another");
}

int CampaignPlan::bits_per_element() const {
  if (o_.bits != BitChoice::All || space_.tensors.empty()) return 1;
  return space_.tensors.front().bits;
}

std::vector<Fault> CampaignPlan::faults(int64_t i) const {
  if (i < 0 || i >= size_) fail("fault set ", i, ": the campaign has ", size_);
  if (o_.campaign == "exhaustive") {
    if (!o_.elements.empty()) {
      const int per = bits_per_element();
      const int bit = o_.bits == BitChoice::All ? static_cast<int>(i % per)
                      : o_.bits == BitChoice::One ? o_.bit
                                                  : -1;
      return {space_.element(o_.elements[i / per], bit)};
    }
    if (o_.bits == BitChoice::All) return {space_.at(i)};
    return {space_.element(i, o_.bits == BitChoice::One ? o_.bit : -1)};
  }
  if (o_.campaign == "sampled") return {space_.at(samples_[i])};
  if (o_.campaign == "list") return {o_.faults[static_cast<size_t>(i)]};
  // ber: how many bits flip, then where; every fault set has its own stream.
  const double ber = o_.ber[i / o_.runs];
  Rng rng(derive_seed(o_.seed, static_cast<uint64_t>(i) + 1));
  const int64_t k = draw_binomial(space_.positions(), ber, rng);
  std::vector<Fault> out;
  for (int64_t pos : draw_distinct(space_.positions(), k, rng)) out.push_back(space_.at(pos));
  return out;
}

bool CampaignCounts::complete() const {
  return std::none_of(failures.begin(), failures.end(), [](int64_t f) { return f < 0; });
}

std::string campaign_checkpoint_path(const std::string& dir, int rank, int ranks) {
  const std::string name = ranks == 1 ? std::string("checkpoint.json")
                                      : "checkpoint.rank" + std::to_string(rank) + "of" +
                                            std::to_string(ranks) + ".json";
  return (std::filesystem::path(dir) / name).string();
}

CampaignCounts run_campaign(const CampaignPlan& plan, Engine& engine, int64_t images,
                            const RunOptions& r) {
  using clock = std::chrono::steady_clock;
  if (r.ranks < 1 || r.rank < 0 || r.rank >= r.ranks)
    fail("rank ", r.rank, " of ", r.ranks, ": expected 0 <= rank < ranks");
  CampaignCounts c;
  c.failures.assign(static_cast<size_t>(plan.size()), -1);
  double seconds_before = 0;  // spent on this campaign by earlier, interrupted processes
  nlohmann::json partial;
  if (r.resume && !r.checkpoint.empty() && std::filesystem::exists(r.checkpoint)) {
    Checkpoint k = load_checkpoint(r.checkpoint, r.fingerprint, plan.size(), images);
    c.failures = std::move(k.failures);
    seconds_before = k.seconds;
    partial = std::move(k.partial);
  }
  // This process's share of the fault sets: every ranks-th from rank on.
  std::vector<int64_t> share;
  for (int64_t i = r.rank; i < plan.size(); i += r.ranks) share.push_back(i);
  const int64_t total = static_cast<int64_t>(share.size());
  int64_t done = std::count_if(share.begin(), share.end(), [&](int64_t i) { return c.failures[i] >= 0; });
  const auto start = clock::now();
  auto last_report = start, last_checkpoint = start;
  auto seconds = [&](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
  double progressed = 0;  // fault sets' worth of work done by this process
  auto report = [&](double now_done) {
    if (!r.progress) return;
    CampaignProgress p;
    p.done = static_cast<int64_t>(now_done);
    p.total = total;
    p.seconds = seconds(start);
    const double rate = p.seconds > 0 ? progressed / p.seconds : 0;
    p.evaluations_per_second = rate * images;
    p.seconds_left = rate > 0 ? (total - now_done) / rate : 0;
    r.progress(p);
  };
  std::vector<int64_t> pending;
  for (int64_t i : share)
    if (c.failures[i] < 0) pending.push_back(i);
  std::vector<std::vector<Fault>> sets;
  for (int64_t i : pending) sets.push_back(plan.faults(i));
  if (!sets.empty() && engine.image_major(sets)) {
    // Image-major: every pending fault set, chunk of images by chunk; the checkpoint keeps the
    // partial counts and the images done.
    // A step is a group of pending fault sets over one chunk of images, sized to take about a
    // second, so progress, checkpoints and stops come that often however long a chunk takes.
    std::vector<int64_t> counts(sets.size(), 0);
    ImageMajorState st = partial_counts(partial, r.checkpoint, images, counts);
    const int64_t n = static_cast<int64_t>(sets.size());
    auto worth = [&] {  // fault sets' worth of this campaign's pending work that is done
      if (images == 0) return 0.0;
      return (static_cast<double>(n) * st.from +
              static_cast<double>(st.sets_done) * (st.to - st.from)) / images;
    };
    const double worth_before = worth();
    auto save = [&] {
      save_checkpoint(r.checkpoint, r.fingerprint, c.failures, seconds_before + seconds(start),
                      partial_json(st, counts));
    };
    const int64_t chunk = std::max<int64_t>(1, r.image_chunk);
    constexpr double kStepSeconds = 1.0;
    int64_t group = 1;  // fault sets in the next step: one, then as many as fill a step
    bool stopped = false;
    while (st.from < images && !stopped) {
      if (st.sets_done == 0) st.to = std::min(images, st.from + chunk);
      const int64_t g = std::min(group, n - st.sets_done);
      const std::vector<std::vector<Fault>> step(sets.begin() + st.sets_done,
                                                 sets.begin() + st.sets_done + g);
      std::vector<int64_t> step_counts(static_cast<size_t>(g), 0);
      const auto step_start = clock::now();
      engine.failures_over(step, st.from, st.to, std::max(1, r.workers), step_counts);
      const double per_set = seconds(step_start) / static_cast<double>(g);
      group = std::max<int64_t>(1, std::min<int64_t>(n, static_cast<int64_t>(
                                       kStepSeconds / std::max(per_set, 1e-9))));
      for (int64_t k = 0; k < g; ++k) counts[st.sets_done + k] += step_counts[k];
      st.sets_done += g;
      if (st.sets_done == n) {
        st.from = st.to;
        st.sets_done = 0;
      }
      progressed = worth() - worth_before;
      if (seconds(last_report) >= 2.0 && st.from < images) {
        report(done + worth());
        last_report = clock::now();
      }
      stopped = (r.stop_after > 0 && progressed >= static_cast<double>(r.stop_after)) ||
                (r.stop && r.stop());
      if (!r.checkpoint.empty() && st.from < images && !stopped &&
          seconds(last_checkpoint) >= r.checkpoint_seconds) {
        save();
        last_checkpoint = clock::now();
      }
    }
    if (st.from == images) {
      for (size_t k = 0; k < sets.size(); ++k) c.failures[pending[k]] = counts[k];
      done += n;
      if (!r.checkpoint.empty() && r.checkpoint_at_end)
        save_checkpoint(r.checkpoint, r.fingerprint, c.failures, seconds_before + seconds(start));
    } else if (!r.checkpoint.empty()) {
      save();
    }
    report(done + (st.from < images ? worth() : 0.0));
    c.seconds = seconds_before + seconds(start);
    return c;
  }
  // Workers claim the pending fault sets in index order; each result goes to its own slot, so
  // the counts do not depend on the number of workers or on timing.
  const int64_t todo = r.stop_after > 0 ? std::min<int64_t>(r.stop_after, pending.size())
                                        : static_cast<int64_t>(pending.size());
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(r.workers, todo)));
  std::atomic<int64_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex m;  // guards c.failures, done and progressed
  auto work = [&](int) {
    try {
      for (int64_t k; !stop && !(r.stop && r.stop()) && (k = next++) < todo;) {
        const int64_t f = engine.failures(sets[k]);
        std::lock_guard<std::mutex> lock(m);
        c.failures[pending[k]] = f;
        ++done;
        ++progressed;
      }
    } catch (...) {
      stop = true;  // the other workers end after their current fault set
      throw;
    }
  };
  auto tick = [&] {
    std::lock_guard<std::mutex> lock(m);
    if (seconds(last_report) >= 2.0 && done < total) {
      report(static_cast<double>(done));
      last_report = clock::now();
    }
    if (!r.checkpoint.empty() && seconds(last_checkpoint) >= r.checkpoint_seconds) {
      try {
        save_checkpoint(r.checkpoint, r.fingerprint, c.failures, seconds_before + seconds(start));
      } catch (...) {
        stop = true;  // a checkpoint that cannot be written ends the campaign now, not at its end
        throw;
      }
      last_checkpoint = clock::now();
    }
  };
  // Several workers share the cores: each runs its tensor operations on one thread.
  const int torch_threads = torch::get_num_threads();
  if (workers > 1) torch::set_num_threads(1);
  std::exception_ptr error;
  try {
    parallel_for(workers, work, std::chrono::milliseconds(200), tick);
  } catch (...) {
    error = std::current_exception();
  }
  if (workers > 1) torch::set_num_threads(torch_threads);
  if (!r.checkpoint.empty() && (done < total || (r.checkpoint_at_end && !error)))
    save_checkpoint(r.checkpoint, r.fingerprint, c.failures, seconds_before + seconds(start));
  if (error) std::rethrow_exception(error);
  report(static_cast<double>(done));
  c.seconds = seconds_before + seconds(start);
  return c;
}

RateStats rate_stats(std::vector<double> rates) {
  RateStats s;
  s.count = static_cast<int64_t>(rates.size());
  if (rates.empty()) return s;
  std::sort(rates.begin(), rates.end());
  auto quantile = [&](double q) {
    const double pos = q * (rates.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(rates.size() - 1, lo + 1);
    return rates[lo] + (pos - lo) * (rates[hi] - rates[lo]);
  };
  s.worst = rates.back();
  double sum = 0;
  for (double v : rates) sum += v;
  s.mean = sum / rates.size();
  s.q50 = quantile(0.5);
  s.q90 = quantile(0.9);
  s.q99 = quantile(0.99);
  s.q999 = quantile(0.999);
  s.nonzero = std::count_if(rates.begin(), rates.end(), [](double v) { return v > 0; });
  return s;
}

Interval mean_interval(const std::vector<double>& values, double confidence,
                       std::optional<int64_t> population) {
  Interval iv;
  const double n = static_cast<double>(values.size());
  if (values.empty()) return iv;
  double sum = 0;
  for (double v : values) sum += v;
  iv.mean = sum / n;
  if (values.size() < 2) {
    iv.half_width = std::numeric_limits<double>::quiet_NaN();
  } else {
    double ss = 0;
    for (double v : values) ss += (v - iv.mean) * (v - iv.mean);
    double se = std::sqrt(ss / (n - 1) / n);
    if (population && *population > 1)
      se *= std::sqrt(std::max(0.0, (*population - n) / (*population - 1.0)));
    iv.half_width = normal_quantile(confidence) * se;
  }
  iv.low = iv.mean - iv.half_width;
  iv.high = iv.mean + iv.half_width;
  return iv;
}

std::vector<int64_t> rate_histogram(const std::vector<double>& rates, double bin_width) {
  if (!(bin_width > 0 && bin_width <= 1)) fail("bin_width ", bin_width, ": expected (0, 1]");
  const int64_t bins = static_cast<int64_t>(std::ceil(1.0 / bin_width - 1e-9));
  std::vector<int64_t> h(static_cast<size_t>(bins), 0);
  for (double r : rates) {
    int64_t k = static_cast<int64_t>(std::floor(r / bin_width + 1e-12));
    h[static_cast<size_t>(std::clamp<int64_t>(k, 0, bins - 1))]++;
  }
  return h;
}

}  // namespace flipguard
