#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unistd.h>
#include <utility>
#include <vector>

namespace flipguard {

using nlohmann::json;

namespace {

constexpr char kMagic[8] = {'F', 'L', 'I', 'P', 'G', 'R', 'D', '\n'};

/// The names an enum's values have in the header, and the lookup both ways.
template <typename E>
struct NameTable {
  const char* what;  // for messages: "block operation"
  std::vector<std::pair<E, const char*>> names;

  const char* name(E v) const {
    for (const auto& [e, n] : names)
      if (e == v) return n;
    return "?";
  }
  E value(const std::string& s) const {
    std::vector<std::string> known;
    for (const auto& [e, n] : names) {
      if (s == n) return e;
      known.emplace_back(n);
    }
    const std::string last = known.back();
    known.pop_back();
    fail("unknown ", what, " '", s, "': expected ", join(known), " or ", last);
  }
};

const NameTable<Op> kOps{"block operation",
                         {{Op::Conv, "conv"},
                          {Op::Linear, "linear"},
                          {Op::Pool, "pool"},
                          {Op::Concat, "concat"},
                          {Op::Add, "add"}}};

/// Whether a block needs format version 2 (an addition, groups, a clamp): files without them
/// are written as version 1, byte for byte as before, so that older readers still load them.
bool needs_v2(const Block& b) { return b.op == Op::Add || b.groups != 1 || b.clamps(); }

/// A clamp bound in the header: a number, or null for no bound (JSON has no infinity).
json bound_json(double v) { return std::isinf(v) ? json(nullptr) : json(v); }
double bound_from_json(const json& j, double none) { return j.is_null() ? none : j.get<double>(); }

const NameTable<PoolKind> kPools{"pooling kind",
                                 {{PoolKind::None, "none"},
                                  {PoolKind::Max, "max"},
                                  {PoolKind::Avg, "avg"},
                                  {PoolKind::GlobalAvg, "global_avg"}}};

json pool_json(const PoolSpec& p) {
  return {{"kind", kPools.name(p.kind)},
          {"kernel", p.kernel},
          {"stride", p.stride},
          {"padding", p.padding},
          {"ceil_mode", p.ceil_mode}};
}

PoolSpec pool_from_json(const json& j) {
  PoolSpec p;
  p.kind = kPools.value(j.at("kind").get<std::string>());
  p.kernel = j.at("kernel").get<int>();
  p.stride = j.at("stride").get<int>();
  p.padding = j.at("padding").get<int>();
  p.ceil_mode = j.at("ceil_mode").get<bool>();
  return p;
}

json format_json(const FixedPoint& f) {
  json j = {{"bits", f.bits}, {"frac", f.frac}, {"signed", f.is_signed}};
  if (f.restricted) j["range"] = {f.range_lo, f.range_hi};
  return j;
}

FixedPoint format_from_json(const json& j) {
  FixedPoint f;
  f.bits = j.at("bits").get<int>();
  f.frac = j.at("frac").get<int>();
  f.is_signed = j.at("signed").get<bool>();
  if (f.bits < 2 || f.bits > 16) fail("fixed-point format with ", f.bits, " bits: expected 2..16");
  if (j.contains("range")) {
    f.restricted = true;
    f.range_lo = j.at("range").at(0).get<int64_t>();
    f.range_hi = j.at("range").at(1).get<int64_t>();
    if (f.range_lo > f.range_hi || f.range_lo < f.min_code() || f.range_hi > f.max_code())
      fail("range restriction [", f.range_lo, ", ", f.range_hi, "] of format ", f.str(),
           ": expected lo <= hi within [", f.min_code(), ", ", f.max_code(), "]");
  }
  return f;
}

void put_u32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

}  // namespace

void save_model(const Model& model, const std::string& path) {
  const Network& net = model.net;
  net.validate();
  json h;
  h["arch"] = net.arch;
  h["input"] = {net.input.c, net.input.h, net.input.w};
  h["input_mean"] = net.input_mean;
  h["input_std"] = net.input_std;
  json blocks = json::array();
  uint32_t version = 1;
  std::string data;
  json tensors = json::array();
  auto add_tensor = [&](const std::string& name, const torch::Tensor& t) {
    auto c = t.detach().to(torch::kFloat32).contiguous();
    tensors.push_back({{"name", name}, {"shape", c.sizes().vec()}});
    data.append(reinterpret_cast<const char*>(c.data_ptr<float>()), c.numel() * sizeof(float));
  };
  for (const Block& b : net.blocks) {
    json jb = {{"name", b.name},      {"op", kOps.name(b.op)},         {"inputs", b.inputs},
               {"relu", b.relu},      {"post", pool_json(b.post)},   {"pool", pool_json(b.pool)},
               {"out_channels", b.out_channels}, {"kernel", b.kernel}, {"stride", b.stride},
               {"padding", b.padding}, {"dilation", b.dilation}};
    if (b.groups != 1) jb["groups"] = b.groups;
    if (b.clamps()) jb["clamp"] = {bound_json(b.clamp_min), bound_json(b.clamp_max)};
    version = std::max(version, needs_v2(b) ? 2u : 1u);
    blocks.push_back(jb);
    if (b.weighted()) {
      add_tensor(b.name + ".weight", b.weight);
      add_tensor(b.name + ".bias", b.bias);
    }
  }
  h["blocks"] = blocks;
  h["tensors"] = tensors;
  if (model.quant) {
    const QuantFormats& q = *model.quant;
    json act = json::array(), weight = json::array();
    for (const auto& f : q.act) act.push_back(format_json(f));
    for (const auto& f : q.weight) weight.push_back(format_json(f));
    h["quant"] = {{"input", format_json(q.input)}, {"act", act}, {"weight", weight},
                  {"bias_bits", q.bias_bits}};
  }
  h["meta"] = model.meta;
  const std::string header = h.dump();
  std::string out(kMagic, sizeof kMagic);
  put_u32(out, version);
  put_u64(out, header.size());
  out += header;
  out += data;
  put_u32(out, crc32_of(out.data(), out.size()));
  write_file_atomic(path, out);
}

Model load_model(const std::string& path) {
  // The magic first: a file of any size (or a device that never ends) that is no model file is
  // refused before it is read whole.
  const std::string head = read_file_head(path, sizeof kMagic, "model file");
  if (head.size() < sizeof kMagic || std::memcmp(head.data(), kMagic, sizeof kMagic) != 0)
    fail("'", path, "' is not a flipguard model file: its first bytes are not the magic \"FLIPGRD\"");
  // (The CRC-32 below covers the magic too, should the file change between the two reads.)
  const std::string s = read_file(path, "model file");
  const size_t fixed = sizeof kMagic + 4 + 8;
  if (s.size() < fixed + 4)
    fail("model file '", path, "' is truncated: ", s.size(), " bytes, too short for a header");
  const uint32_t version = static_cast<uint32_t>(get_le(s, sizeof kMagic, 4));
  if (version > kModelFormatVersion)
    fail("model file '", path, "' has format version ", version,
         ", newer than this flipguard supports (", kModelFormatVersion, "): update flipguard");
  if (version == 0) fail("model file '", path, "' has invalid format version 0");
  const uint64_t hlen = get_le(s, sizeof kMagic + 4, 8);
  if (hlen > s.size() - fixed - 4)
    fail("model file '", path, "' is truncated: header of ", hlen, " bytes announced, ",
         s.size() - fixed - 4, " bytes left");
  json h;
  try {
    h = json::parse(s.substr(fixed, hlen));
  } catch (const std::exception& e) {
    fail("model file '", path, "' has a corrupt header: ", e.what());
  }
  Model m;
  try {
    // The tensors' sizes, checked against the bytes the file has before anything is allocated
    // (and before a product could overflow).
    const int64_t data_bytes = static_cast<int64_t>(s.size()) - static_cast<int64_t>(fixed + hlen) - 4;
    int64_t expected = 0;
    for (const auto& t : h.at("tensors")) {
      int64_t n = 1;
      for (auto d : t.at("shape")) {
        const int64_t v = d.get<int64_t>();
        if (v < 0 || v > (int64_t{1} << 31))
          fail("model file '", path, "': tensor '", t.at("name").get<std::string>(),
               "' has a dimension of ", v, "; expected 0 to 2^31");
        if (v > 0 && n > std::max<int64_t>(0, data_bytes - expected) / 4 / v)
          fail("model file '", path, "' is truncated: its tensors need more than the ",
               std::max<int64_t>(0, data_bytes), " bytes of data it has");
        n *= v;
      }
      expected += n * 4;
    }
    const uint64_t total = fixed + hlen + expected + 4;
    if (s.size() != total)
      fail("model file '", path, "' is ", s.size() < total ? "truncated" : "too long", ": expected ",
           total, " bytes, found ", s.size());
    const uint32_t crc = static_cast<uint32_t>(get_le(s, s.size() - 4, 4));
    if (crc != crc32_of(s.data(), s.size() - 4))
      fail("model file '", path, "' is corrupt: its CRC-32 does not match its contents");

    Network& net = m.net;
    net.arch = h.at("arch").get<std::string>();
    auto in_shape = h.at("input").get<std::vector<int64_t>>();
    if (in_shape.size() != 3) fail("input shape must have 3 dimensions");
    net.input = {in_shape[0], in_shape[1], in_shape[2]};
    net.input_mean = h.at("input_mean").get<std::vector<double>>();
    net.input_std = h.at("input_std").get<std::vector<double>>();
    size_t at = fixed + hlen;
    size_t ti = 0;
    const auto& tensors = h.at("tensors");
    auto next_tensor = [&](const std::string& name) {
      if (ti >= tensors.size()) fail("tensor '", name, "' is missing");
      const auto& t = tensors[ti++];
      if (t.at("name").get<std::string>() != name)
        fail("expected tensor '", name, "', found '", t.at("name").get<std::string>(), "'");
      auto shape = t.at("shape").get<std::vector<int64_t>>();
      auto out = torch::empty(shape, torch::kFloat32);
      if (out.numel() > 0)  // an empty tensor has no data pointer to copy to
        std::memcpy(out.data_ptr<float>(), s.data() + at, out.numel() * sizeof(float));
      at += out.numel() * sizeof(float);
      return out;
    };
    for (const auto& jb : h.at("blocks")) {
      Block b;
      b.name = jb.at("name").get<std::string>();
      b.op = kOps.value(jb.at("op").get<std::string>());
      b.inputs = jb.at("inputs").get<std::vector<int>>();
      b.relu = jb.at("relu").get<bool>();
      b.post = pool_from_json(jb.at("post"));
      b.pool = pool_from_json(jb.at("pool"));
      b.out_channels = jb.at("out_channels").get<int64_t>();
      b.kernel = jb.at("kernel").get<int>();
      b.stride = jb.at("stride").get<int>();
      b.padding = jb.at("padding").get<int>();
      b.dilation = jb.at("dilation").get<int>();
      if (jb.contains("groups")) b.groups = jb.at("groups").get<int>();
      if (jb.contains("clamp")) {
        b.clamp_min = bound_from_json(jb.at("clamp").at(0), -INFINITY);
        b.clamp_max = bound_from_json(jb.at("clamp").at(1), INFINITY);
      }
      if (b.weighted()) {
        b.weight = next_tensor(b.name + ".weight");
        b.bias = next_tensor(b.name + ".bias");
      }
      net.blocks.push_back(std::move(b));
    }
    net.validate();
    if (h.contains("quant")) {
      const auto& jq = h.at("quant");
      QuantFormats q;
      q.input = format_from_json(jq.at("input"));
      for (const auto& f : jq.at("act")) q.act.push_back(format_from_json(f));
      for (const auto& f : jq.at("weight")) q.weight.push_back(format_from_json(f));
      q.bias_bits = jq.at("bias_bits").get<int>();
      if (q.act.size() != net.blocks.size() || q.weight.size() != net.blocks.size())
        fail("quantization formats for ", q.act.size(), " blocks, network has ", net.blocks.size());
      m.quant = q;
    }
    if (h.contains("meta")) m.meta = h.at("meta");
  } catch (const json::exception& e) {
    fail("model file '", path, "' has an invalid header: ", e.what());
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find(path) != std::string::npos) throw;
    fail("model file '", path, "' is invalid: ", what);
  }
  return m;
}

}  // namespace flipguard
