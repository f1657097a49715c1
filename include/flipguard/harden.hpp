#pragma once
/// \file
/// Resilience optimization of the network itself (section IV of the paper).
///
/// Architectural optimization (IV-A, V-E1): an activation site with far fewer neurons than the
/// others is a bottleneck: each of its neurons carries a large share of the information, so one
/// flipped bit there does the most harm. Where such a site is the output of a global average
/// pooling that is read only by a 1x1 convolution or a fully-connected block with no ReLU and no
/// pooling of its own, the pooling is moved behind that block. Both operations are linear, so
/// they commute and the float function is unchanged, while the pooling's small output is no
/// longer stored: the larger feature map before it is.
#include <flipguard/network.hpp>

#include <string>
#include <vector>

namespace flipguard {

/// Options of the architectural optimization.
struct ArchitectureOptions {
  /// A site is a bottleneck when it has fewer than `bottleneck_ratio` times the neurons of the
  /// median site (the median of the sites' neuron counts, the lower one for an even count).
  double bottleneck_ratio = 1.0 / 16;
};

/// A bottleneck site and what became of it.
struct Bottleneck {
  int block = -1;           ///< block index in the original network
  std::string name;         ///< block name
  Shape shape;              ///< site shape
  int64_t median_neurons = 0;  ///< neurons of the median site, for comparison
  bool fixed = false;       ///< the pooling was moved behind its reader
  std::string action;       ///< what was changed, or why it could not be
};

/// What `optimize_architecture` found and did.
struct ArchitectureReport {
  std::vector<Bottleneck> bottlenecks;
  int moved = 0;  ///< poolings moved
};

/// The bottleneck sites of a network by the rule of ArchitectureOptions.
std::vector<Bottleneck> find_bottlenecks(const Network& net, const ArchitectureOptions& o = {});

/// Moves every global average pooling whose site is a bottleneck behind its single linear reader
/// (1x1 convolution without padding or stride, or fully-connected block; neither with a ReLU or
/// a pooling of its own). A fully-connected reader becomes the equivalent 1x1 convolution.
/// Returns the rewritten network (arch name with "-opt" appended when anything changed) and
/// fills `report`. The float class scores agree with the input network's up to rounding.
Network optimize_architecture(const Network& net, ArchitectureReport& report,
                              const ArchitectureOptions& o = {});

// ---------------------------------------------------------------------------------------------
// Feature optimization (IV-B, Algorithm 1).
// ---------------------------------------------------------------------------------------------

/// Eq. 6: the weights of a block that reads a site, each input feature c scaled by the site's
/// mean criticality over its own: w̃_k,c,u,v = w_k,c,u,v / (η_c · C) · Σ_c' η_c', so that weights
/// fed by a feature of above-average criticality η (eq. 5) shrink and the others grow; the
/// reciprocals of the factors average one (the paper's "average weight scaling factor of one"),
/// and eq. 5 on the adjusted weights gives every feature the mean criticality. `weight` is
/// K x C x U x V (convolution) or K x (C·H·W) (fully-connected, whose input is the C x H x W
/// site: columns c·H·W .. (c+1)·H·W − 1 belong to feature c);
/// `eta` has C non-negative values. A feature with η_c = 0 (no relevance reaches it) keeps its
/// weights: eq. 6 would scale them without bound. Throws Error for a size mismatch, a negative
/// or non-finite η, or an all-zero η. Returns a new tensor of the weight's shape and type.
torch::Tensor adjust_weights(const torch::Tensor& weight, const torch::Tensor& eta);

}  // namespace flipguard
