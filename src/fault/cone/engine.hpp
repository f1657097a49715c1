#pragma once
// The cone engine's state: ConeEngine::Impl, its golden data per chunk of images and a worker's
// scratch space. Its methods live by concept: plan.cpp (compiling the network into stages),
// bound.cpp (the pruning bound), propagate.cpp (a fault's change through the stages),
// engine.cpp (chunks, workers, the public class). Private to the library.
#include <flipguard/fault.hpp>
#include <flipguard/quant.hpp>

#include "kernels.hpp"
#include "plan.hpp"

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace flipguard {

namespace cone {

/// Golden data of a chunk of images, computed once and shared by every fault.
struct ChunkData {
  int64_t n = 0;
  std::vector<torch::Tensor> codes;  // per site: int32 n x C x H x W
  std::vector<torch::Tensor> acc;    // per weighted block: int64 n x H x W x K (before pooling)
  // Per global-average pooling block: int64 n x C. Per addition: its exact golden sum (inputs
  // aligned), int64 n x C x H x W.
  std::vector<torch::Tensor> sums;
  // Fused stages whose accumulators fit int32: accumulators and golden codes, n x H x W x K.
  std::vector<torch::Tensor> acc32, gold32;
  torch::Tensor scores;  // int64 n x classes
  torch::Tensor labels;  // int64 n
};

/// One fault, decoded.
struct Decoded {
  int site;
  int32_t c, y, x;
  const std::vector<int32_t>* flip;  // new code by golden code - min code
};

/// A thread's scratch space.
struct Scratch {
  std::vector<int32_t> delta;  // change of accumulators, positions x K
  std::vector<uint8_t> hit;    // (position, group) pairs reached: position x groups + group
  std::vector<int32_t> hits;   // their list
  // Pooled (position, group) pairs, channel x position (pooling blocks) or elements (additions)
  // reached.
  std::vector<uint8_t> cell;
  std::vector<int32_t> cells;
  std::vector<int64_t> wide;  // change of an addition's exact sum, per element
  // Per site: the change of its codes, kept from the block that wrote it to its last reader;
  // empty when it did not change or is no longer read.
  std::vector<std::vector<Entry>> live;
  std::vector<Entry> none;  // the network input's change: always empty
  std::vector<int32_t> dense;  // change of an input map (max pooling blocks)
  std::vector<Entry> next;  // the change of the site at hand, being built
  std::vector<int64_t> dscore;
  std::vector<int64_t> csum;     // change per channel, summed over positions (summed last block)
  std::vector<int32_t> csum32;   // the same from the fused step
  std::vector<int64_t> best;     // per channel: pooled maximum of one cell
  std::vector<uint8_t> changed;  // per channel: whether a position of the cell changed
  std::vector<int32_t> best32, any32;  // the same for int32 accumulators
  std::vector<int32_t> ks, ds;         // changed channels of a cell and their changes
  std::vector<double> bound;           // per class
  std::vector<int16_t> channel;        // change per input channel of one position (packed path)
  std::vector<uint8_t> paired;         // channel pairs present
  std::vector<int32_t> pairs, packed;
  ConeStats stats;
};

}  // namespace cone

struct ConeEngine::Impl {
  using Entry = cone::Entry;
  using Stage = cone::Stage;
  using ChunkData = cone::ChunkData;
  using Decoded = cone::Decoded;
  using Scratch = cone::Scratch;

  const QuantizedNetwork& q;
  const GoldenRun& g;
  FaultTarget target;
  EngineOptions o;
  IncrementalEngine incremental;
  std::vector<Stage> stages;
  std::vector<int> last_reader;  // per block: the last block that reads it (-1: none)
  std::string unsupported;  // why the kernel cannot run this network; empty: it can
  int64_t classes = 0;
  std::mutex m;
  ConeStats totals;
  std::map<std::pair<int, int>, std::vector<int32_t>> flips;  // (site, bit) -> table
  const ConeKernels& kernels;  // chosen once, by o.simd and the processor

  Impl(const QuantizedNetwork& q_, const GoldenRun& g_, FaultTarget t, const EngineOptions& o_);

  // plan.cpp
  /// Compiles the network into `stages`; throws Error for a network the engine does not handle.
  void build();
  static std::vector<int32_t> to_vector(const torch::Tensor& t);

  // bound.cpp
  /// The pruning bound of the convolution `s` whose site feeds the last block `last`: a 1x1
  /// convolution (stride 1, no padding) or fully-connected block on a 1x1 map, without ReLU, whose
  /// scores are the sum over positions (global average pooling) or the single position.
  void build_bound(Stage& s, int last);
  /// Whether the bound proves that the change `cur` of stage s's input cannot make image n fail.
  bool harmless(const Stage& s, const std::vector<Entry>& cur, const int64_t* score, int64_t label,
                Scratch& w) const;

  // propagate.cpp
  /// Convolution or fully-connected stage: adds the change of the input into the accumulators it
  /// reaches (w.delta, positions listed in w.hits).
  void accumulate(const Stage& s, const std::vector<Entry>& cur, Scratch& w) const;
  int64_t act(const Stage& s, int64_t a) const { return s.relu ? std::max<int64_t>(a, 0) : a; }
  /// Stage b's new site codes from the accumulated change: out(channel, row, column, change) for
  /// every code that changed. acc32 (int32 accumulators, or null) and gold32 (golden codes
  /// position-major, or null) select the vectorized steps.
  template <class Out>
  void emit(const Stage& s, const int64_t* acc, const int32_t* acc32, const int32_t* gold,
            const int32_t* gold32, Scratch& w, Out&& out) const;
  /// The last block: adds the accumulated change to the golden scores; whether the image fails.
  bool score(const Stage& s, const int64_t* acc, const int64_t* golden, int64_t label,
             Scratch& w) const;
  /// The last block as a plain sum (Stage::summed): whether the change of its input, summed
  /// per channel in w.csum (reset here), fails the image.
  bool summed_fails(const Stage& s, const int64_t* golden, int64_t label, Scratch& w) const;
  int64_t argmax(const int64_t* golden, const std::vector<int64_t>& dscore) const;
  /// The change of input `j` of a stage: the site's, or none for the network input.
  static const std::vector<Entry>& changes(const Scratch& w, int j) {
    return j == Block::kNetworkInput ? w.none : w.live[j];
  }
  /// Addition stage: the changes of its inputs, aligned and summed, through the activation and
  /// the rounding (sum: the exact golden sums, gold: golden codes, channel-major).
  void add(const Stage& s, const int64_t* sum, const int32_t* gold, Scratch& w) const;
  /// Pooling stage on a change of codes.
  void pool(const Stage& s, const std::vector<Entry>& cur, const int32_t* in, const int32_t* gold,
            const int64_t* sums, Scratch& w) const;
  /// Whether fault f makes image i of the chunk fail.
  bool fails(const Decoded& f, const ChunkData& d, int64_t i, Scratch& w) const;

  // engine.cpp
  bool accepts(const std::vector<std::vector<Fault>>& sets) const;
  const std::vector<int32_t>* flip_table(int site, int bit);
  ChunkData prepare(int64_t begin, int64_t end, int first_site) const;
  void reserve(Scratch& w) const;
  void run(const std::vector<std::vector<Fault>>& sets, int64_t begin, int64_t end, int threads,
           std::vector<int64_t>& counts);
};

}  // namespace flipguard
