#pragma once
/// \file
/// The network of the fuzz targets that need one (campaign results, training checkpoints) and
/// of the seeds (make_corpus.cpp): small, with every kind of block; and the training run whose
/// checkpoints fuzz_training_checkpoint reads.
#include <flipguard/data.hpp>
#include <flipguard/network.hpp>
#include <flipguard/train.hpp>

#include <torch/torch.h>

namespace flipguard::fuzz {

/// A tiny network with every kind of block: a convolution with ReLU and max pooling, a
/// depthwise convolution with ReLU6, an addition, a hardtanh, global pooling and a linear head.
inline Network tiny_network() {
  torch::manual_seed(7);
  Network net;
  net.arch = "fuzz-tiny";
  net.input = {1, 8, 8};
  net.input_mean = {0.5};
  net.input_std = {0.25};
  Block c1;
  c1.name = "conv1";
  c1.out_channels = 2;
  c1.kernel = 3;
  c1.padding = 1;
  c1.weight = torch::randn({2, 1, 3, 3});
  c1.bias = torch::randn({2});
  c1.relu = true;
  c1.post = PoolSpec::max(2, 2);
  Block dw = c1;
  dw.name = "dw";
  dw.inputs = {0};
  dw.groups = 2;
  dw.weight = torch::randn({2, 1, 3, 3});
  dw.clamp_max = 6;
  dw.post = {};
  Block add;
  add.name = "add";
  add.op = Op::Add;
  add.inputs = {0, 1};
  add.clamp_min = -1;
  add.clamp_max = 1;
  Block gap;
  gap.name = "gap";
  gap.op = Op::Pool;
  gap.inputs = {2};
  gap.pool = PoolSpec::global_avg();
  Block fc;
  fc.name = "fc";
  fc.op = Op::Linear;
  fc.inputs = {3};
  fc.out_channels = 3;
  fc.weight = torch::randn({3, 2});
  fc.bias = torch::randn({3});
  net.blocks = {c1, dw, add, gap, fc};
  return net;
}

/// Two 8x8 grey images of two classes: the training set of tiny_training().
inline Dataset tiny_training_set() {
  Dataset d;
  d.name = "fuzz";
  d.images = torch::arange(2 * 64, torch::kLong).remainder(251).to(torch::kUInt8).view({2, 1, 8, 8});
  d.labels = torch::tensor({0, 1}, torch::kLong);
  d.class_names = {"a", "b"};
  return d;
}

/// One epoch over tiny_training_set(), batches of two, checkpoint after the epoch written to
/// `checkpoint`, no progress lines.
inline TrainOptions tiny_training(const std::string& checkpoint) {
  TrainOptions o;
  o.epochs = 1;
  o.batch_size = 2;
  o.checkpoint = checkpoint;
  o.log_every = 0;
  return o;
}

}  // namespace flipguard::fuzz
