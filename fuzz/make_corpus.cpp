// Writes the seed corpus of every fuzz target (fuzz/corpus/TARGET/): small, real files of each
// reader's format, made by flipguard's own writers where it has them.
//   build/fuzz_make_corpus fuzz/corpus [TORCHSCRIPT_DIR]
// TORCHSCRIPT_DIR: the output of tests/torchscript/make_models.py, whose small modules seed the
// TorchScript target.
#include <flipguard/campaign.hpp>
#include <flipguard/error.hpp>
#include <flipguard/harden.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/quant.hpp>
#include <flipguard/report.hpp>

#include <opencv2/imgcodecs.hpp>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "fault/checkpoint.hpp"
#include "tiny_network.hpp"

namespace fs = std::filesystem;
using namespace flipguard;

namespace {

fs::path g_root;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = g_root / target;
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) fail("cannot write ", (dir / name).string());
}

std::string u32le(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}
std::string u32be(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(v >> (8 * (3 - i)));
  return s;
}

std::string gzip(const std::string& plain) {
  z_stream z{};
  if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) fail("deflateInit2");
  std::string out(deflateBound(&z, plain.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data()));
  z.avail_in = static_cast<uInt>(plain.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) fail("deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string read(const fs::path& p) { return read_file(p.string()); }

void model_seeds(const fs::path& tmp) {
  Model m;
  m.net = flipguard::fuzz::tiny_network();
  m.meta = {{"source", "fuzz_make_corpus"}};
  save_model(m, (tmp / "float.fgm").string());
  put("model_file", "tiny-float.fgm", read(tmp / "float.fgm"));
  QuantOptions qo;
  qo.refine = false;
  const torch::Tensor images = torch::randint(0, 256, {4, 1, 8, 8}, torch::kUInt8);
  m.quant = calibrate(m.net, images, qo);
  save_model(m, (tmp / "q8.fgm").string());
  put("model_file", "tiny-q8.fgm", read(tmp / "q8.fgm"));

  FeatureState st;
  st.net = m.net;
  st.formats = *m.quant;
  st.done = 1;
  FeatureIteration it;
  it.iteration = 0;
  it.quantized_accuracy = 0.5;
  it.float_accuracy = 0.5;
  it.sites = {0, 1};
  it.site_sd = {0.1, 0.2};
  st.history = {it};
  save_feature_checkpoint((tmp / "features.ckpt").string(), st, 0.5, "fuzz", m.meta);
  put("feature_checkpoint", "iteration1.ckpt", read(tmp / "features.ckpt"));
}

/// A checkpoint of fuzz::tiny_training(), seeding both of fuzz_training_checkpoint's modes.
void training_seeds(const fs::path& tmp) {
  const std::string ckpt = (tmp / "train.ckpt").string();
  Network net = flipguard::fuzz::tiny_network();
  train_network(net, flipguard::fuzz::tiny_training_set(), Dataset{},
                flipguard::fuzz::tiny_training(ckpt), [](const std::string&) {});
  put("training_checkpoint", "resume.ckpt", std::string(1, '\0') + read(ckpt));
  put("training_checkpoint", "init.ckpt", std::string(1, '\1') + read(ckpt));
}

void checkpoint_seeds(const fs::path& tmp) {
  namespace ck = checkpoint_detail;
  const nlohmann::json fp = {{"campaign", "exhaustive"}, {"sites", {0, 2}}, {"images", 1000}};
  ck::save_checkpoint((tmp / "a.json").string(), fp, {3, -1, 0, 1000}, 12.5);
  // Mode byte 1: recompute the CRC-32, take fingerprint and size from the checkpoint.
  put("campaign_checkpoint", "sets.json", "\x01" + read(tmp / "a.json"));
  put("campaign_checkpoint", "sets-as-written.json", std::string(1, '\0') + read(tmp / "a.json"));
  ck::ImageMajorState st{128, 256, 1};
  ck::save_checkpoint((tmp / "b.json").string(), fp, {-1, 7, -1, -1}, 3,
                      ck::partial_json(st, {40, 2, 0}));
  put("campaign_checkpoint", "image-major.json", "\x01" + read(tmp / "b.json"));
}

std::string idx_images(uint32_t n, uint32_t h, uint32_t w) {
  std::string s = u32be(0x00000803) + u32be(n) + u32be(h) + u32be(w);
  for (uint32_t i = 0; i < n * h * w; ++i) s += static_cast<char>(i * 37);
  return s;
}
std::string idx_labels(uint32_t n) {
  std::string s = u32be(0x00000801) + u32be(n);
  for (uint32_t i = 0; i < n; ++i) s += static_cast<char>(i % 10);
  return s;
}

void data_seeds() {
  const std::string im = idx_images(3, 4, 5), lb = idx_labels(3);
  put("idx", "plain", u32le(static_cast<uint32_t>(im.size())) + im + lb);
  const std::string gim = gzip(im), glb = gzip(lb);
  put("idx", "gzip", u32le(static_cast<uint32_t>(gim.size())) + gim + glb);

  std::string cifar;
  for (int r = 0; r < 2; ++r) {
    cifar += static_cast<char>(r * 7 % 10);
    for (int i = 0; i < 3072; ++i) cifar += static_cast<char>((i * 13 + r) & 255);
  }
  put("cifar_binary", "two-records.bin", cifar);

  auto encode = [](const std::string& ext, const cv::Mat& m) {
    std::vector<uchar> b;
    if (!cv::imencode(ext, m, b)) fail("cannot encode ", ext);
    return std::string(b.begin(), b.end());
  };
  cv::Mat grey(4, 4, CV_8UC1), colour(6, 5, CV_8UC3);
  cv::randu(grey, 0, 256);
  cv::randu(colour, 0, 256);
  // Choice byte: bit 0 .png, bit 1 colour, bits 2-3 transform, bit 4 a second class.
  put("image_folder", "grey.png", std::string(1, '\x11') + encode(".png", grey));
  put("image_folder", "colour.png", std::string(1, '\x07') + encode(".png", colour));
  put("image_folder", "grey.jpg", std::string(1, '\x10') + encode(".jpg", grey));
  put("image_folder", "colour.jpg", std::string(1, '\x0a') + encode(".jpg", colour));

  put("data_spec", "mnist", "mnist");
  put("data_spec", "imagenet", "imagenet:/data/imagenet?resize=256&crop=224");
  put("data_spec", "cifar", "cifar10:/data/cifar10?crop=32");
}

void fault_seeds() {
  put("fault_list", "samples.csv",
      std::string(1, '\0') + "block,name,index,bit,rate\n0,conv1,3,7,0.25\n2,add,1,0,0\n");
  put("fault_list", "sites.csv", std::string(1, '\0') + "site,index,bit\r\n1,\"5\",6\r\n");
  const std::string ints = npy_bytes(std::vector<int64_t>{0, 3, 7, 2, 1, 0}, {2, 3});
  const std::string list = npy_bytes(std::vector<double>{0.5, 1, 0, 0.25, 1e-3, 2}, {2, 3});
  put("fault_list", "faults.npy", "\x01" + ints);
  put("npy", "float64-2x3.npy", list);
  put("npy", "scalar.npy", npy_bytes(std::vector<double>{1.5}, {}));
  put("npy", "int64.npy", ints);
}

void campaign_results_seeds() {
  // Site 0 of tiny_network: 2 x 4 x 4 neurons.
  const std::string summary =
      R"({"arch":"fuzz-tiny","campaign":"exhaustive","target":"activations","images":100})";
  std::vector<double> rates;
  std::string csv = "index,c,y,x,bit,failure_rate\n";
  for (int i = 0; i < 32; ++i) {
    rates.push_back(i % 5 * 0.01);
    csv += std::to_string(i) + "," + std::to_string(i / 16) + "," + std::to_string(i / 4 % 4) + "," +
           std::to_string(i % 4) + ",7," + std::to_string(i % 5 * 0.01) + "\n";
  }
  const std::string parts = u32le(static_cast<uint32_t>(summary.size())) + summary;
  put("campaign_results", "npy", std::string(1, '\0') + parts + npy_bytes(rates, {2, 4, 4}));
  put("campaign_results", "csv", std::string(1, '\1') + parts + csv);
}

void torchscript_seeds(const fs::path& dir) {
  // Choice byte: the input shape (0: 3x20x20, 1: 3x16x16, 2: 4x8x8, 3: 1x28x28).
  const std::pair<const char*, char> files[] = {{"sigmoid_traced.pt", 0},
                                                {"alpha_add_traced.pt", 1},
                                                {"aliased_add_scripted.pt", 1},
                                                {"grouped_traced.pt", 2},
                                                {"every_op_traced.pt", 0}};
  for (const auto& [name, shape] : files) put("torchscript", name, std::string(1, shape) + read(dir / name));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [TORCHSCRIPT_DIR]\n", argv[0]);
    return 2;
  }
  try {
    g_root = argv[1];
    const fs::path tmp = fs::temp_directory_path() / ("fuzz-corpus." + std::to_string(getpid()));
    fs::create_directories(tmp);
    model_seeds(tmp);
    checkpoint_seeds(tmp);
    training_seeds(tmp);
    data_seeds();
    fault_seeds();
    campaign_results_seeds();
    if (argc == 3) torchscript_seeds(argv[2]);
    fs::remove_all(tmp);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_make_corpus: %s\n", e.what());
    return 1;
  }
  return 0;
}
