/// \file
/// TorchScript import and state-dict export (torchscript.hpp).
///
/// The module is frozen in evaluation mode with its parameters kept as attributes
/// (`freeze_module(..., preserveParameters = true)`): freezing inlines every submodule's forward
/// and folds `self.training` and the branches that depend on it, so that traced and scripted
/// modules both become one flat graph, while every weight is still read through a chain of
/// `prim::GetAttr` nodes whose names spell its state-dict key. The graph is then walked in order:
/// each weighted operation, concatenation or addition starts a block, and a ReLU, clamp
/// (hardtanh, ReLU6), pooling or batch normalization that follows is merged into the block before
/// it where the block model allows (DESIGN.md: an operation, then an optional ReLU and clamp, then
/// an optional pooling).
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/scope.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/script.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "flipguard/error.hpp"
#include "flipguard/io.hpp"
#include "flipguard/limits.hpp"
#include "flipguard/torchscript.hpp"
#include "../util/torch_child.hpp"

namespace flipguard {

const std::vector<double>& imagenet_mean() {
  static const std::vector<double> m = {0.485, 0.456, 0.406};
  return m;
}
const std::vector<double>& imagenet_std() {
  static const std::vector<double> s = {0.229, 0.224, 0.225};
  return s;
}

namespace {

using nlohmann::json;
using torch::jit::Node;
using torch::jit::Value;

/// The value `aten::size(x, 0)` stands for: the batch size, unknown when importing.
constexpr int64_t kBatch = std::numeric_limits<int64_t>::min() / 2;

const std::string kSupported =
    "aten::_convolution, aten::conv2d, aten::linear, aten::addmm, aten::relu, aten::relu_, "
    "aten::relu6, aten::hardtanh, aten::hardtanh_, aten::clamp, aten::max_pool2d, "
    "aten::avg_pool2d, aten::adaptive_avg_pool2d, aten::cat, aten::add, aten::add_, "
    "aten::flatten, aten::view, aten::reshape, aten::dropout, aten::batch_norm";

std::string kind_of(const Node* n) { return n->kind().toQualString(); }

/// "make_models.py:52 (%input.3)": where a node comes from, for error messages.
std::string where(const Node* n) {
  std::string s;
  // A loaded module's code is its serialized form; the range it was generated from (kept as
  // debug information by torch.jit.save) points at the user's own Python file.
  torch::jit::SourceRange range = n->sourceRange();
  if (auto original = range.findSourceRangeThatGenerated()) range = *original;
  if (auto flc = range.file_line_col()) {
    s = std::filesystem::path(std::get<0>(*flc)).filename().string() + ":" +
        std::to_string(std::get<1>(*flc));
  }
  if (n->outputs().size() > 0) s += (s.empty() ? "" : " ") + ("(%" + n->output(0)->debugName() + ")");
  return s.empty() ? std::string("an unnamed node") : s;
}

bool is_tensor(const Value* v) { return v->type()->kind() == c10::TypeKind::TensorType; }

bool produces_tensors(const Node* n) {
  for (const Value* v : n->outputs()) {
    if (is_tensor(v)) return true;
    if (auto list = v->type()->cast<c10::ListType>())
      if (list->getElementType()->kind() == c10::TypeKind::TensorType) return true;
  }
  return false;
}

/// True for a node that computes no tensors, neither itself nor in its sub-blocks.
bool computes_no_tensors(const Node* n) {
  if (produces_tensors(n)) return false;
  for (const torch::jit::Block* b : n->blocks())
    for (const Node* inner : b->nodes())
      if (!computes_no_tensors(inner)) return false;
  return true;
}

/// True for a node with no outputs whose sub-blocks compute no tensors: an assertion such as
/// `if x.dim() != 4: raise ...`, which the block model checks on its own.
bool is_assertion(const Node* n) { return n->outputs().empty() && computes_no_tensors(n); }

/// Nodes that only pass their tensor through for inference.
bool is_passthrough(const std::string& k) {
  return k == "aten::dropout" || k == "aten::dropout_" || k == "aten::feature_dropout" ||
         k == "aten::alpha_dropout" || k == "aten::contiguous" || k == "aten::detach";
}
bool is_reshape(const std::string& k) {
  return k == "aten::flatten" || k == "aten::view" || k == "aten::reshape";
}
/// Nodes that read only a tensor's shape, never its values.
bool reads_shape_only(const std::string& k) {
  return k == "aten::size" || k == "aten::dim" || k == "aten::len" || k == "prim::shape";
}

/// How many operations read the values of `v`, following pass-through and reshape nodes.
int data_uses(const Value* v) {
  int n = 0;
  for (const torch::jit::Use& u : v->uses()) {
    const std::string k = kind_of(u.user);
    if (reads_shape_only(k)) continue;
    if ((is_passthrough(k) || is_reshape(k)) && u.offset == 0) {
      n += data_uses(u.user->output());
    } else {
      ++n;
    }
  }
  return n;
}

/// A tensor argument and the state-dict key it was read from ("" for a constant).
struct Param {
  std::string name;
  torch::Tensor tensor;  ///< undefined for None
};

/// Where a tensor value of the graph lives: the output of a block (or the network input), and
/// whether it was flattened to (batch, features).
struct Ref {
  int block = Block::kNetworkInput;
  bool flat = false;
};

class Importer {
 public:
  /// `original` is the module as loaded, for its complete state dict (freezing drops the
  /// buffers that inference does not read, such as batch normalization's num_batches_tracked).
  Importer(const torch::jit::Module& frozen, const torch::jit::Module& original,
           const ImportOptions& o, const std::string& path)
      : module_(frozen), original_(original), graph_(frozen.get_method("forward").graph()) {
    net_.arch = o.arch.empty() ? std::filesystem::path(path).stem().string() : o.arch;
    net_.input = o.input;
    net_.input_mean = o.mean;
    net_.input_std = o.std;
  }

  Model run() {
    const auto inputs = graph_->inputs();
    if (inputs.size() != 2 || !is_tensor(inputs[1]))
      fail("the module's forward takes ", inputs.size() - 1,
           " arguments; expected one tensor (the image batch)");
    refs_[inputs[1]] = Ref{};
    for (Node* n : graph_->nodes()) visit(n);
    finish();
    Model m;
    m.net = std::move(net_);
    m.meta["torchscript"] = {{"blocks", blocks_meta_}, {"state_dict", state_dict_meta()}};
    return m;
  }

 private:
  // ---- constants and attributes -----------------------------------------------------------

  /// The attribute a GetAttr chain reads, with its dotted path from the module.
  std::pair<std::string, c10::IValue> attribute(const Value* v) const {
    if (v == graph_->inputs()[0]) return {"", module_._ivalue()};
    const Node* n = v->node();
    if (kind_of(n) != "prim::GetAttr")
      fail("expected a module attribute, got ", kind_of(n), " at ", where(n));
    auto [path, parent] = attribute(n->input(0));
    const std::string name = n->s(c10::attr::name);
    return {path.empty() ? name : path + "." + name, parent.toObjectRef().getAttr(name)};
  }

  Param tensor_arg(const Value* v, const Node* user) const {
    if (kind_of(v->node()) == "prim::GetAttr") {
      auto [path, value] = attribute(v);
      if (value.isNone()) return {};
      if (!value.isTensor()) fail("attribute ", path, " used by ", where(user), " is not a tensor");
      return {path, value.toTensor().detach()};
    }
    const c10::optional<c10::IValue> c = torch::jit::toIValue(v);
    if (c && c->isNone()) return {};
    if (c && c->isTensor()) return {"", c->toTensor().detach()};
    fail(kind_of(user), " at ", where(user), " takes a weight computed by ", kind_of(v->node()),
         "; expected a parameter of the module");
  }

  /// An integer argument: a constant, or the size of a tensor along a dimension.
  int64_t int_of(const Value* v, const Node* user) const {
    if (const c10::optional<c10::IValue> c = torch::jit::toIValue(v); c && c->isInt())
      return c->toInt();
    const Node* n = v->node();
    const std::string k = kind_of(n);
    if (k == "prim::NumToTensor" || k == "aten::Int") return int_of(n->input(0), user);
    if (k == "aten::size" && n->inputs().size() == 2) {
      const std::vector<int64_t> dims = dims_of(n->input(0), user);
      int64_t d = int_of(n->input(1), user);
      if (d < 0) d += static_cast<int64_t>(dims.size());
      if (d < 0 || d >= static_cast<int64_t>(dims.size()))
        fail("aten::size at ", where(n), ": dimension out of range");
      return dims[d];
    }
    fail(kind_of(user), " at ", where(user), " takes an integer computed by ", k,
         ", which flipguard cannot evaluate; expected a constant or a tensor size");
  }

  std::vector<int64_t> ints_of(const Value* v, const Node* user) const {
    if (const c10::optional<c10::IValue> c = torch::jit::toIValue(v)) {
      if (c->isIntList()) return c->toIntVector();
      if (c->isInt()) return {c->toInt()};
    }
    const Node* n = v->node();
    if (kind_of(n) == "prim::ListConstruct") {
      std::vector<int64_t> out;
      for (const Value* e : n->inputs()) out.push_back(int_of(e, user));
      return out;
    }
    fail(kind_of(user), " at ", where(user), " takes a list computed by ", kind_of(n),
         ", which flipguard cannot evaluate; expected constants");
  }

  c10::IValue constant(const Value* v, const Node* user) const {
    const c10::optional<c10::IValue> c = torch::jit::toIValue(v);
    if (!c) fail(kind_of(user), " at ", where(user), " takes a non-constant argument from ",
                 kind_of(v->node()));
    return *c;
  }
  bool bool_of(const Value* v, const Node* user) const { return constant(v, user).toBool(); }
  double double_of(const Value* v, const Node* user) const {
    return constant(v, user).toDouble();
  }

  /// One value of a pair such as stride (2, 2); `what` names it for the error.
  int64_t square(const std::vector<int64_t>& pair, const std::string& what, const Node* n,
                 int64_t if_empty) const {
    if (pair.empty()) return if_empty;
    if (pair.size() == 1 || (pair.size() == 2 && pair[0] == pair[1])) return pair[0];
    fail(kind_of(n), " at ", where(n), ": ", what, " (", join(pair), ") differs between height "
         "and width; flipguard supports square windows only");
  }

  // ---- graph state ------------------------------------------------------------------------

  Ref ref_of(const Value* v, const Node* user) const {
    auto it = refs_.find(v);
    if (it == refs_.end())
      fail(kind_of(user), " at ", where(user), " reads a tensor computed by ",
           kind_of(v->node()), " at ", where(v->node()), ", which flipguard does not support");
    return it->second;
  }

  /// Batch-first dimensions of a tensor value, kBatch standing for the batch.
  std::vector<int64_t> dims_of(const Value* v, const Node* user) const {
    const Ref r = ref_of(v, user);
    const Shape s = shape(r.block);
    if (r.flat) return {kBatch, s.numel()};
    return {kBatch, s.c, s.h, s.w};
  }

  Shape shape(int block) const {
    if (block == Block::kNetworkInput) return net_.input;
    return net_.shapes()[block];
  }

  /// Appends a block, checks the graph, and maps `out` to it.
  int add(Block b, const Node* n, json meta = json()) {
    const int idx = static_cast<int>(net_.blocks.size());
    if (b.name.empty()) b.name = block_kind(b) + std::to_string(idx);
    for (const Block& other : net_.blocks)
      if (other.name == b.name) b.name += "@" + std::to_string(idx);
    net_.blocks.push_back(std::move(b));
    checked(n);
    if (!meta.is_null()) blocks_meta_[net_.blocks.back().name] = std::move(meta);
    refs_[n->output()] = Ref{idx, false};
    root_[idx] = n->output();
    return idx;
  }

  static std::string block_kind(const Block& b) {
    switch (b.op) {
      case Op::Conv: return "conv";
      case Op::Linear: return "linear";
      case Op::Pool: return "pool";
      case Op::Concat: return "cat";
      case Op::Add: return "add";
    }
    return "block";
  }

  /// Revalidates the graph after a change caused by node `n`.
  void checked(const Node* n) const {
    try {
      net_.shapes();
    } catch (const Error& e) {
      fail(kind_of(n), " at ", where(n), ": ", e.what());
    }
  }

  /// Whether the block that `r` refers to may take one more operation behind it: nothing but
  /// the node at hand reads its output.
  bool mergeable(const Ref& r) const {
    return r.block != Block::kNetworkInput && data_uses(root_.at(r.block)) == 1;
  }

  // ---- operations -------------------------------------------------------------------------

  void visit(Node* n) {
    const std::string k = kind_of(n);
    if (!produces_tensors(n)) {
      if (n->outputs().empty() && !n->blocks().empty() && !is_assertion(n))
        fail("control flow (", k, ") at ", where(n),
             " is not supported: flipguard imports straight-line graphs");
      return;  // constants, attributes and shape arithmetic are evaluated where they are used
    }
    if (k == "prim::ListConstruct" || k == "prim::GetAttr" || k == "prim::Constant") return;
    // A weight's transpose, as addmm reads it, is evaluated there.
    if (k == "aten::t" && kind_of(n->input(0)->node()) == "prim::GetAttr") return;
    if (k == "aten::_convolution" || k == "aten::conv2d") return conv(n);
    if (k == "aten::linear") return linear(n);
    if (k == "aten::addmm") return addmm(n);
    if (k == "aten::relu" || k == "aten::relu_") return relu(n);
    if (k == "aten::hardtanh" || k == "aten::hardtanh_" || k == "aten::relu6" ||
        k == "aten::relu6_" || k == "aten::clamp" || k == "aten::clamp_")
      return clamp(n);
    if (k == "aten::add" || k == "aten::add_") return add_tensors(n);
    if (k == "aten::max_pool2d" || k == "aten::avg_pool2d" || k == "aten::adaptive_avg_pool2d")
      return pool(n);
    if (k == "aten::cat") return concat(n);
    if (is_reshape(k)) return reshape(n);
    if (is_passthrough(k)) {
      refs_[n->output()] = ref_of(n->input(0), n);
      return;
    }
    if (k == "aten::batch_norm") return batch_norm(n);
    fail("unsupported operation ", k, " at ", where(n), "; flipguard imports ", kSupported);
  }

  void conv(const Node* n) {
    const bool full = kind_of(n) == "aten::_convolution";
    const Ref in = ref_of(n->input(0), n);
    if (in.flat) fail(kind_of(n), " at ", where(n), " reads a flattened tensor");
    const Param w = tensor_arg(n->input(1), n), b = tensor_arg(n->input(2), n);
    const std::string at = where(n) + (w.name.empty() ? "" : " in '" + module_path(w.name) + "'");
    if (!w.tensor.defined() || w.tensor.dim() != 4)
      fail(kind_of(n), " at ", at, ": expected a 4-D weight (2-D convolution)");
    if (n->input(4)->type()->kind() == c10::TypeKind::StringType)
      fail(kind_of(n), " at ", at, ": padding='", constant(n->input(4), n).toStringRef(),
           "' is not supported; expected numbers");
    if (full && bool_of(n->input(6), n))
      fail(kind_of(n), " at ", at, ": transposed convolution is not supported");
    const int64_t groups = int_of(n->input(full ? 8 : 6), n);
    if (groups < 1 || w.tensor.size(0) % groups != 0)
      fail(kind_of(n), " at ", at, ": groups = ", groups, " with ", w.tensor.size(0),
           " output channels; expected a positive number of groups that divides them");
    if (w.tensor.size(2) != w.tensor.size(3))
      fail(kind_of(n), " at ", at, ": kernel ", w.tensor.size(2), "x", w.tensor.size(3),
           " is not square; flipguard supports square kernels only");
    Block blk;
    blk.op = Op::Conv;
    blk.name = module_path(w.name);
    blk.inputs = {in.block};
    blk.out_channels = w.tensor.size(0);
    blk.kernel = static_cast<int>(w.tensor.size(2));
    blk.stride = static_cast<int>(square(ints_of(n->input(3), n), "stride", n, 1));
    blk.padding = static_cast<int>(square(ints_of(n->input(4), n), "padding", n, 0));
    blk.dilation = static_cast<int>(square(ints_of(n->input(5), n), "dilation", n, 1));
    blk.groups = static_cast<int>(groups);
    add_weighted(std::move(blk), w, b, n);
  }

  void linear(const Node* n) {
    fully_connected(n, n->input(0), tensor_arg(n->input(1), n), tensor_arg(n->input(2), n));
  }

  /// aten::addmm(bias, x, weight.t(), beta, alpha): how older versions of PyTorch traced
  /// nn.Linear; a Linear block where beta and alpha are 1.
  void addmm(const Node* n) {
    for (int i : {3, 4})
      if (n->inputs().size() > static_cast<size_t>(i) && scalar_of(n->input(i), n) != 1.0)
        fail("aten::addmm at ", where(n), ": ", i == 3 ? "beta" : "alpha", " = ",
             scalar_of(n->input(i), n), " is not supported; expected 1 (a linear layer)");
    const Node* t = n->input(2)->node();
    if (kind_of(t) != "aten::t")
      fail("aten::addmm at ", where(n), " multiplies by a matrix computed by ", kind_of(t),
           "; expected the transpose (aten::t) of a linear layer's weight");
    fully_connected(n, n->input(1), tensor_arg(t->input(0), n), tensor_arg(n->input(0), n));
  }

  void fully_connected(const Node* n, const Value* x, const Param& w, const Param& b) {
    const Ref in = ref_of(x, n);
    if (!w.tensor.defined() || w.tensor.dim() != 2)
      fail(kind_of(n), " at ", where(n), ": expected a 2-D weight");
    Block blk;
    blk.op = Op::Linear;
    blk.name = module_path(w.name);
    blk.inputs = {in.block};
    blk.out_channels = w.tensor.size(0);
    add_weighted(std::move(blk), w, b, n);
  }

  static std::string module_path_or_root(const std::string& param) {
    const size_t dot = param.rfind('.');
    return dot == std::string::npos ? std::string() : param.substr(0, dot);
  }

  static std::string module_path(const std::string& param) {
    const size_t dot = param.rfind('.');
    return dot == std::string::npos ? param : param.substr(0, dot);
  }

  void add_weighted(Block blk, const Param& w, const Param& b, const Node* n) {
    blk.weight = w.tensor.to(torch::kFloat32).contiguous().clone();
    blk.bias = b.tensor.defined() ? b.tensor.to(torch::kFloat32).contiguous().clone()
                                  : torch::zeros({blk.out_channels});
    json meta = {{"weight", w.name.empty() ? json() : json(w.name)},
                 {"bias", b.name.empty() ? json() : json(b.name)}};
    add(std::move(blk), n, std::move(meta));
  }

  void relu(const Node* n) {
    const Ref r = ref_of(n->input(0), n);
    if (r.block == Block::kNetworkInput)
      fail(kind_of(n), " at ", where(n), ": a ReLU on the network input is not supported");
    Block& b = net_.blocks[r.block];
    if (!b.relu) {
      check_activation(n, r, "ReLU");
      // max(min(max(x, lo), hi), 0) is the block's ReLU then clamp while hi > 0.
      if (b.clamp_max <= 0)
        fail(kind_of(n), " at ", where(n), ": a ReLU after the clamp of '", b.name, "' to at most ",
             b.clamp_max, " gives only zeros");
      b.relu = true;
    }
    refs_[n->output()] = r;
    root_[r.block] = n->output();
  }

  /// Whether an activation (what `n` computes) may join the block that `r` refers to; fails
  /// otherwise.
  void check_activation(const Node* n, const Ref& r, const char* what) const {
    const Block& b = net_.blocks[r.block];
    if (!mergeable(r))
      fail(kind_of(n), " at ", where(n), ": the output of '", b.name, "' is also read without this ",
           what, "; flipguard's blocks apply their activation to their only output");
    // Monotone activations commute with max pooling, not with an average.
    if (b.post.kind != PoolKind::None && b.post.kind != PoolKind::Max)
      fail(kind_of(n), " at ", where(n), ": a ", what, " after the average pooling of '", b.name,
           "' is not supported");
  }

  /// A number argument (int or float constant), as double.
  double scalar_of(const Value* v, const Node* user) const {
    const c10::IValue c = constant(v, user);
    if (c.isInt()) return static_cast<double>(c.toInt());
    if (c.isDouble()) return c.toDouble();
    fail(kind_of(user), " at ", where(user), " takes ", c.tagKind(), "; expected a number");
  }

  /// hardtanh(x, lo, hi), relu6(x) (= hardtanh(x, 0, 6)), clamp(x, lo?, hi?): the clamp of the
  /// block before. A lower bound of exactly 0 is that block's ReLU, so that ReLU6 has one form
  /// (relu with clamp_max 6) whichever way the module spells it.
  void clamp(const Node* n) {
    const std::string k = kind_of(n);
    const Ref r = ref_of(n->input(0), n);
    if (r.block == Block::kNetworkInput)
      fail(k, " at ", where(n), ": a clamp on the network input is not supported");
    if (r.flat) fail(k, " at ", where(n), " reads a flattened tensor");
    double lo = -std::numeric_limits<double>::infinity();
    double hi = std::numeric_limits<double>::infinity();
    if (k == "aten::relu6" || k == "aten::relu6_") {
      lo = 0;
      hi = 6;
    } else {
      for (int i : {1, 2}) {
        if (n->inputs().size() <= static_cast<size_t>(i)) continue;
        if (const c10::optional<c10::IValue> c = torch::jit::toIValue(n->input(i));
            c && c->isNone())
          continue;
        (i == 1 ? lo : hi) = scalar_of(n->input(i), n);
      }
    }
    check_activation(n, r, "clamp");
    Block& b = net_.blocks[r.block];
    // Clamps compose into the intersection of their intervals when they overlap.
    Block merged = b;
    merged.clamp_min = std::max(b.clamp_min, lo);
    merged.clamp_max = std::min(b.clamp_max, hi);
    if (merged.clamp_min == 0 || (b.relu && merged.clamp_min < 0)) {
      merged.relu = true;
      merged.clamp_min = -std::numeric_limits<double>::infinity();
    }
    if (std::isnan(lo) || std::isnan(hi) || !(merged.act_lo() < merged.act_hi()))
      fail(k, " at ", where(n), ": clamping '", b.name, "' to [", lo, ", ", hi,
           "] behind its activation [", b.act_lo(), ", ", b.act_hi(),
           "] leaves no interval; expected lower < upper");
    b.relu = merged.relu;
    b.clamp_min = merged.clamp_min;
    b.clamp_max = merged.clamp_max;
    refs_[n->output()] = r;
    root_[r.block] = n->output();
  }

  /// aten::add(a, b, alpha) and its in-place twin of two block outputs of one shape: an Add
  /// block (a ReLU that follows joins it as its activation).
  void add_tensors(const Node* n) {
    const std::string k = kind_of(n);
    if (!is_tensor(n->input(1)))
      fail(k, " at ", where(n), " adds a ", n->input(1)->type()->repr_str(),
           "; expected the sum of two tensors (a residual addition)");
    if (n->inputs().size() > 2) {
      const double alpha = scalar_of(n->input(2), n);
      if (alpha != 1.0)
        fail(k, " at ", where(n), ": alpha = ", alpha,
             " is not supported; expected 1 (a plain sum a + b)");
    }
    if (k == "aten::add_") {
      // An in-place sum changes what later readers of its first operand see; the block graph
      // gives them the value before the sum, so refuse that.
      for (const torch::jit::Use& u : n->input(0)->uses())
        if (u.user != n && u.user->isAfter(n) && !reads_shape_only(kind_of(u.user)))
          fail(k, " at ", where(n), " adds into a tensor that ", kind_of(u.user), " at ",
               where(u.user), " reads afterwards; expected the sum to be its only later use");
    }
    Block b;
    b.op = Op::Add;
    b.inputs.clear();
    for (const Value* v : {n->input(0), n->input(1)}) {
      const Ref r = ref_of(v, n);
      if (r.flat) fail(k, " at ", where(n), " adds flattened tensors");
      b.inputs.push_back(r.block);
    }
    const std::string module = module_of(n);
    if (!module.empty()) b.name = module + ".add";
    add(std::move(b), n);
  }

  /// The module whose forward `n` was inlined from ("layer1.0"), from its inlined call stack;
  /// "" for the top module or where the archive kept no such record.
  static std::string module_of(const Node* n) {
    std::string path;
    if (const c10::optional<torch::jit::InlinedCallStackPtr> stack = n->callstack()) {
      for (const torch::jit::InlinedCallStackEntry& e : (*stack)->vec())
        if (const auto& info = std::get<2>(e); info && !info->instance_name().empty())
          path += (path.empty() ? "" : ".") + info->instance_name();
    }
    return path;
  }

  void pool(const Node* n) {
    const std::string k = kind_of(n);
    const Ref r = ref_of(n->input(0), n);
    if (r.flat) fail(k, " at ", where(n), " reads a flattened tensor");
    const Shape in = shape(r.block);
    PoolSpec p;
    if (k == "aten::adaptive_avg_pool2d") {
      const std::vector<int64_t> size = ints_of(n->input(1), n);
      const int64_t oh = size.at(0), ow = size.size() > 1 ? size[1] : size[0];
      if (oh == in.h && ow == in.w) {  // the identity
        refs_[n->output()] = r;
        return;
      }
      if (oh == 1 && ow == 1) {
        p = PoolSpec::global_avg();
      } else if (in.h % oh == 0 && in.w % ow == 0 && in.h / oh == in.w / ow) {
        p = {PoolKind::Avg, static_cast<int>(in.h / oh), static_cast<int>(in.h / oh), 0, false};
      } else {
        fail(k, " at ", where(n), " to ", oh, "x", ow, " from ", in.h, "x", in.w,
             " is not a plain average pooling; expected 1x1 or a size that divides the input");
      }
    } else {
      const bool max = k == "aten::max_pool2d";
      p.kind = max ? PoolKind::Max : PoolKind::Avg;
      p.kernel = static_cast<int>(square(ints_of(n->input(1), n), "kernel", n, 0));
      p.stride = static_cast<int>(square(ints_of(n->input(2), n), "stride", n, p.kernel));
      p.padding = static_cast<int>(square(ints_of(n->input(3), n), "padding", n, 0));
      if (max) {
        if (square(ints_of(n->input(4), n), "dilation", n, 1) != 1)
          fail(k, " at ", where(n), ": dilated max pooling is not supported");
        p.ceil_mode = bool_of(n->input(5), n);
      } else {
        p.ceil_mode = bool_of(n->input(4), n);
        if (p.padding > 0 && !bool_of(n->input(5), n))
          fail(k, " at ", where(n), ": count_include_pad=False with padding is not supported");
        if (n->inputs().size() > 6 && !constant(n->input(6), n).isNone())
          fail(k, " at ", where(n), ": divisor_override is not supported");
        if (p.ceil_mode) {
          // A window cut by ceil_mode has a smaller divisor in PyTorch than kernel^2; accept
          // ceil_mode only where it produces no such window.
          PoolSpec floor = p;
          floor.ceil_mode = false;
          if (!(pooled_shape(in, floor) == pooled_shape(in, p)))
            fail(k, " at ", where(n), ": ceil_mode=True cuts windows at the border of ",
                 in.str(), ", which average pooling with a fixed divisor cannot express");
          p.ceil_mode = false;
        }
      }
    }
    if (mergeable(r) && net_.blocks[r.block].post.kind == PoolKind::None) {
      net_.blocks[r.block].post = p;
      checked(n);
      refs_[n->output()] = r;
      root_[r.block] = n->output();
      return;
    }
    Block b;
    b.op = Op::Pool;
    b.name = (r.block == Block::kNetworkInput ? std::string("input") : net_.blocks[r.block].name) +
             ".pool";
    b.pool = p;
    b.inputs = {r.block};
    add(std::move(b), n);
  }

  void concat(const Node* n) {
    const Node* list = n->input(0)->node();
    if (kind_of(list) != "prim::ListConstruct")
      fail("aten::cat at ", where(n), " takes a list computed by ", kind_of(list),
           "; expected a list of tensors");
    const int64_t dim = int_of(n->input(1), n);
    Block b;
    b.op = Op::Concat;
    b.inputs.clear();
    for (const Value* v : list->inputs()) {
      const Ref r = ref_of(v, n);
      if (r.flat) fail("aten::cat at ", where(n), " concatenates flattened tensors");
      b.inputs.push_back(r.block);
    }
    if (dim != 1 && dim != -3)
      fail("aten::cat at ", where(n), " along dimension ", dim,
           " is not supported; expected 1 (channels)");
    // Named after the module that its inputs share ("features.3" for a Fire module's expands).
    std::string common;
    for (size_t i = 0; i < b.inputs.size(); ++i) {
      const std::string name = b.inputs[i] < 0 ? "" : net_.blocks[b.inputs[i]].name;
      const std::string module = module_path(name) == name ? "" : module_path(name);
      if (i == 0) common = module;
      while (!common.empty() && module.rfind(common + ".", 0) != 0 && module != common)
        common = module_path(common) == common ? "" : module_path(common);
    }
    if (!common.empty()) b.name = common + ".cat";
    add(std::move(b), n);
  }

  void reshape(const Node* n) {
    const std::string k = kind_of(n);
    const Ref r = ref_of(n->input(0), n);
    const int64_t features = shape(r.block).numel();
    bool ok;
    if (k == "aten::flatten") {
      const int64_t start = int_of(n->input(1), n), end = int_of(n->input(2), n);
      ok = start == 1 && (end == -1 || end == (r.flat ? 1 : 3));
    } else {
      const std::vector<int64_t> to = ints_of(n->input(1), n);
      ok = to.size() == 2 && ((to[0] == kBatch && (to[1] == -1 || to[1] == features)) ||
                              (to[0] == -1 && to[1] == features));
    }
    if (!ok)
      fail(k, " at ", where(n), " does not flatten to (batch, ", features,
           "); flipguard supports flattening the features of each image only");
    refs_[n->output()] = Ref{r.block, true};
  }

  void batch_norm(const Node* n) {
    const Ref r = ref_of(n->input(0), n);
    if (r.block == Block::kNetworkInput || !net_.blocks[r.block].weighted())
      fail("aten::batch_norm at ", where(n),
           " does not follow a convolution or linear layer; flipguard folds batch normalization "
           "into the layer before it");
    Block& b = net_.blocks[r.block];
    if (!b.plain() || !mergeable(r))
      fail("aten::batch_norm at ", where(n), " does not directly follow '", b.name,
           "' (an activation, pooling or another reader comes between); it cannot be folded");
    const Param gamma = tensor_arg(n->input(1), n), beta = tensor_arg(n->input(2), n);
    const Param mean = tensor_arg(n->input(3), n), var = tensor_arg(n->input(4), n);
    const double eps = double_of(n->input(7), n);
    if (bool_of(n->input(5), n))
      fail("aten::batch_norm at ", where(n),
           " normalizes with the batch's own statistics (traced in training mode); expected "
           "evaluation mode (module.eval() before tracing)");
    if (!mean.tensor.defined() || !var.tensor.defined())
      fail("aten::batch_norm at ", where(n), " has no running statistics to fold");
    auto scale = (var.tensor.to(torch::kFloat64) + eps).rsqrt();
    if (gamma.tensor.defined()) scale = scale * gamma.tensor.to(torch::kFloat64);
    auto bias = (b.bias.to(torch::kFloat64) - mean.tensor.to(torch::kFloat64)) * scale;
    if (beta.tensor.defined()) bias = bias + beta.tensor.to(torch::kFloat64);
    std::vector<int64_t> view(b.weight.dim(), 1);
    view[0] = -1;
    b.weight = (b.weight.to(torch::kFloat64) * scale.view(view)).to(torch::kFloat32);
    b.bias = bias.to(torch::kFloat32);
    json bn = {{"weight", gamma.name.empty() ? json() : json(gamma.name)},
               {"bias", beta.name.empty() ? json() : json(beta.name)},
               {"running_mean", mean.name},
               {"running_var", var.name},
               {"eps", eps}};
    const std::string tracked = module_path(mean.name) + ".num_batches_tracked";
    for (const auto& buffer : original_.named_buffers(true))
      if (buffer.name == tracked) {
        bn["num_batches_tracked"] = tracked;
        bn["num_batches_tracked_value"] = buffer.value.item<int64_t>();
      }
    blocks_meta_[b.name]["batch_norm"] = std::move(bn);
    refs_[n->output()] = r;
    root_[r.block] = n->output();
  }

  void finish() {
    const auto outputs = graph_->outputs();
    if (outputs.size() != 1 || !is_tensor(outputs[0]))
      fail("the module returns ", outputs.size(), " values; expected one tensor of class scores");
    const Node* ret = graph_->return_node();
    const Ref r = ref_of(outputs[0], ret);
    const int last = static_cast<int>(net_.blocks.size()) - 1;
    if (r.block == Block::kNetworkInput || r.block != last)
      fail("the module returns the output of ",
           r.block == Block::kNetworkInput ? std::string("its input")
                                           : "'" + net_.blocks[r.block].name + "'",
           ", not of its last operation; expected the class scores to come last");
    std::vector<bool> read(net_.blocks.size(), false);
    for (const Block& b : net_.blocks)
      for (int i : b.inputs)
        if (i >= 0) read[i] = true;
    for (int i = 0; i < last; ++i)
      if (!read[i]) fail("the output of '", net_.blocks[i].name, "' is never used");
    net_.validate();
  }

  json state_dict_meta() const {
    json keys = json::array();
    auto add = [&](const std::string& name, const torch::Tensor& t, const char* kind) {
      keys.push_back({{"name", name},
                      {"shape", t.sizes().vec()},
                      {"dtype", std::string(c10::toString(t.scalar_type()))},
                      {"kind", kind}});
    };
    // The order of Python's state_dict(): each module's parameters, then its buffers.
    std::map<std::string, int> order;
    for (const auto& m : original_.named_modules()) order.emplace(m.name, static_cast<int>(order.size()));
    std::vector<std::tuple<int, int, std::string, torch::Tensor, const char*>> all;
    for (const auto& p : original_.named_parameters(true))
      all.emplace_back(order[module_path_or_root(p.name)], 0, p.name, p.value, "parameter");
    for (const auto& p : original_.named_buffers(true))
      all.emplace_back(order[module_path_or_root(p.name)], 1, p.name, p.value, "buffer");
    std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
      return std::tie(std::get<0>(a), std::get<1>(a)) < std::tie(std::get<0>(b), std::get<1>(b));
    });
    for (const auto& [module, kind, name, value, what] : all) add(name, value, what);
    return keys;
  }

  torch::jit::Module module_;
  torch::jit::Module original_;
  std::shared_ptr<torch::jit::Graph> graph_;
  Network net_;
  std::map<const Value*, Ref> refs_;
  std::map<int, const Value*> root_;  ///< the value that last extended each block
  json blocks_meta_ = json::object();
};

/// Reads the archive in a child process first (src/util/torch_child.hpp): the module, every
/// node's debug record (the Python line an operation came from, read lazily when a message
/// first names it: a damaged one made LibTorch's unpickler allocate 3 GB), in every method and
/// in the frozen graph that the import walks (inlining brings in records that the methods' own
/// graphs do not reach). A crash there is this file's error, not the end of the program.
void check_in_child(const std::string& path) {
  const std::string why = read_in_child(path, [&] {
    const torch::jit::Module m = torch::jit::load(path);
    std::function<void(const torch::jit::Block*)> visit = [&](const torch::jit::Block* b) {
      for (const Node* n : b->nodes()) {
        (void)n->sourceRange().findSourceRangeThatGenerated();
        for (const torch::jit::Block* inner : n->blocks()) visit(inner);
      }
    };
    for (const torch::jit::Module& sub : m.modules())
      for (const torch::jit::Method& method : sub.get_methods()) visit(method.graph()->block());
    torch::jit::Module eval = m.clone();
    eval.eval();
    const torch::jit::Module frozen = torch::jit::freeze_module(eval, {}, true, true);
    for (const torch::jit::Method& method : frozen.get_methods()) visit(method.graph()->block());
  });
  if (!why.empty())
    fail("cannot read TorchScript file '", path, "': ", why,
         "; expected a module written by torch.jit.save");
}

torch::jit::Module load_module(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail("TorchScript file '", path, "' not found");
  // The import and its check against LibTorch (compare_with_torchscript) both load the file:
  // bytes the child has read once need no second child while they stay the same.
  static std::mutex mutex;
  static std::set<std::tuple<std::string, uintmax_t, uint32_t>> checked;
  const std::tuple<std::string, uintmax_t, uint32_t> key{
      std::filesystem::weakly_canonical(path).string(), std::filesystem::file_size(path),
      file_crc32(path, "TorchScript file")};
  bool known = false;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    known = checked.count(key) > 0;
  }
  if (!known) {
    check_in_child(path);
    const std::lock_guard<std::mutex> lock(mutex);
    checked.insert(key);
  }
  try {
    return torch::jit::load(path);
  } catch (const std::exception& e) {
    fail("cannot read TorchScript file '", path, "': ", torch_message(e),
         "; expected a module written by torch.jit.save");
  }
}

}  // namespace

Model import_torchscript(const std::string& path, const ImportOptions& o) {
  check_input_shape(o.input, "input shape");
  torch::jit::Module module = load_module(path);
  module.eval();
  torch::jit::Module frozen;
  try {
    frozen = torch::jit::freeze_module(module, {}, /*freezeInterfaces=*/true,
                                       /*preserveParameters=*/true);
  } catch (const std::exception& e) {
    fail("cannot freeze TorchScript module '", path, "': ", torch_message(e));
  }
  // What LibTorch throws while the graph is read (a constant of another type than its use, an
  // attribute missing from a damaged archive) is an error of the file, named as such.
  try {
    Model m = Importer(frozen, module, o, path).run();
    m.meta["torchscript"]["file"] = path;
    return m;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("cannot import TorchScript module '", path, "': ", torch_message(e));
  }
}

ImportCheck compare_with_torchscript(const Model& model, const std::string& path, int n,
                                     uint64_t seed) {
  torch::jit::Module module = load_module(path);
  module.eval();
  torch::NoGradGuard no_grad;
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  const Shape& s = model.net.input;
  const torch::Tensor x = torch::randn({n, s.c, s.h, s.w}, gen);
  torch::Tensor expected;
  try {
    expected = module.forward({x}).toTensor();
  } catch (const std::exception& e) {
    fail("running TorchScript module '", path, "' on ", s.str(), " inputs failed: ",
         torch_message(e));
  }
  const torch::Tensor got = model.net.forward(x);
  if (got.sizes() != expected.flatten(1).sizes())
    fail("imported model gives class scores of shape ", got.sizes(), ", the module ",
         expected.sizes());
  return {(got - expected.flatten(1)).abs().max().item<double>(),
          expected.abs().max().item<double>()};
}

std::vector<std::pair<std::string, torch::Tensor>> state_dict(const Model& model) {
  if (!model.meta.contains("torchscript"))
    fail("model '", model.net.arch,
         "' was not imported from TorchScript: it has no parameter names to export under");
  const json& ts = model.meta["torchscript"];
  std::map<std::string, torch::Tensor> out;
  auto put = [&](const json& name, const torch::Tensor& t) {
    if (name.is_string()) out[name.get<std::string>()] = t.detach().contiguous().clone();
  };
  for (const Block& b : model.net.blocks) {
    if (!b.weighted()) continue;
    if (!ts["blocks"].contains(b.name))
      fail("block '", b.name, "' has no recorded TorchScript parameter names");
    const json& m = ts["blocks"][b.name];
    if (!m["weight"].is_string())
      fail("block '", b.name, "' took its weight from a constant, not a parameter");
    put(m["weight"], b.weight);
    const bool has_bias = m["bias"].is_string();
    torch::Tensor bias = b.bias;
    if (has_bias) put(m["bias"], b.bias);
    if (m.contains("batch_norm")) {
      const json& bn = m["batch_norm"];
      const int64_t k = b.out_channels;
      const double eps = bn["eps"].get<double>();
      put(bn["weight"], torch::ones({k}));
      put(bn["bias"], torch::zeros({k}));
      put(bn["running_var"], torch::full({k}, 1.0 - eps));
      put(bn["running_mean"], has_bias ? torch::zeros({k}) : -bias);
      if (bn.contains("num_batches_tracked"))
        put(bn["num_batches_tracked"],
            torch::tensor(bn["num_batches_tracked_value"].get<int64_t>(), torch::kInt64));
    } else if (!has_bias && bias.abs().max().item<double>() != 0) {
      fail("block '", b.name, "' has a non-zero bias, but the module's layer has none");
    }
  }
  std::vector<std::pair<std::string, torch::Tensor>> dict;
  std::vector<std::string> missing;
  for (const json& key : ts["state_dict"]) {
    const std::string name = key["name"];
    auto it = out.find(name);
    if (it == out.end()) {
      missing.push_back(name);
      continue;
    }
    const std::vector<int64_t> shape = key["shape"];
    if (it->second.sizes().vec() != shape)
      fail("'", name, "' has shape ", it->second.sizes(), " in the model but ",
           c10::IntArrayRef(shape), " in the module");
    const c10::ScalarType type = it->second.scalar_type();
    if (std::string(c10::toString(type)) != key["dtype"].get<std::string>()) {
      for (auto t : {torch::kFloat16, torch::kFloat32, torch::kFloat64, torch::kInt64})
        if (std::string(c10::toString(t)) == key["dtype"].get<std::string>())
          it->second = it->second.to(t);
    }
    dict.emplace_back(name, it->second);
  }
  if (!missing.empty())
    fail("cannot export: the module's ", join(missing),
         " did not come into the model (unused by forward?)");
  return dict;
}

void export_state_dict(const Model& model, const std::string& path) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (auto& [name, t] : state_dict(model)) dict.insert(name, t);
  const std::vector<char> bytes = torch::jit::pickle_save(c10::IValue(dict));
  write_file_atomic(path, std::string(bytes.begin(), bytes.end()));
}

}  // namespace flipguard
