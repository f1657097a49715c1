// Result writers: .npy files that numpy reads, CSV quoting, numbers that round-trip, figures.
#include <flipguard/error.hpp>
#include <flipguard/report.hpp>

#include <gtest/gtest.h>

#include "helpers.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

using namespace flipguard;
using namespace flipguard::test;
namespace fs = std::filesystem;

namespace {

std::string python(const std::string& code) {
  FILE* p = popen(("/usr/bin/python3 -c \"" + code + "\" 2>&1").c_str(), "r");
  if (!p) return "popen failed";
  std::string out;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return st == 0 ? out : "python3 failed: " + out;
}

}  // namespace

TEST(Npy, HeaderIsAlignedAndDescribesTheArray) {
  const std::string b = npy_bytes(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  ASSERT_EQ(b.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t hlen = static_cast<unsigned char>(b[8]) | static_cast<unsigned char>(b[9]) << 8;
  EXPECT_EQ((10 + hlen) % 64, 0u);
  const std::string header = b.substr(10, hlen);
  EXPECT_NE(header.find("'descr': '<f8'"), std::string::npos);
  EXPECT_NE(header.find("'shape': (2, 3)"), std::string::npos);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_EQ(b.size(), 10 + hlen + 6 * 8);
  // One dimension is written as the tuple (n,).
  const std::string v = npy_bytes(std::vector<int64_t>{7}, {1});
  EXPECT_NE(v.find("'shape': (1,)"), std::string::npos);
  EXPECT_NE(v.find("'descr': '<i8'"), std::string::npos);
  EXPECT_THROW(npy_bytes(std::vector<double>{1, 2}, {3}), Error);
}

TEST(Npy, NumpyLoadsWhatWeWrite) {
  TempDir t;
  const std::string f = (t.path / "a.npy").string();
  write_npy(f, {0.5, -1.25, 3e-7, 1, 2, 3}, {3, 1, 2});
  EXPECT_EQ(python("import numpy as n; a = n.load('" + f + "'); print(a.dtype, a.shape, a[0,0,1], a[1,0,0], a[2,0,1])"),
            "float64 (3, 1, 2) -1.25 3e-07 3.0\n");
  write_npy(f, {}, {0});
  EXPECT_EQ(python("import numpy as n; print(n.load('" + f + "').shape)"), "(0,)\n");
}

TEST(Npy, ReadsWhatWeAndNumpyWrite) {
  TempDir t;
  const std::string f = (t.path / "r.npy").string();
  write_npy(f, {0.5, -1.25, 3e-7, 1, 2, 3}, {3, 1, 2});
  NpyArray a = read_npy(f);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(a.data, (std::vector<double>{0.5, -1.25, 3e-7, 1, 2, 3}));
  const std::string g = (t.path / "n.npy").string();
  ASSERT_EQ(python("import numpy as n; n.save('" + g + "', n.array([[1.5, -2], [0, 4]], n.float32))"), "");
  a = read_npy(g);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a.data, (std::vector<double>{1.5, -2, 0, 4}));
  ASSERT_EQ(python("import numpy as n; n.save('" + g + "', n.arange(3, dtype=n.int32))"), "");
  a = read_npy(g);
  EXPECT_EQ(a.shape, std::vector<int64_t>{3});
  EXPECT_EQ(a.data, (std::vector<double>{0, 1, 2}));
  // Another element type, a truncated file, no .npy at all: errors that name the file.
  ASSERT_EQ(python("import numpy as n; n.save('" + g + "', n.zeros(2, n.complex64))"), "");
  EXPECT_THROW(read_npy(g), Error);
  const std::string bytes = npy_bytes(std::vector<double>{1, 2, 3}, {3});
  std::ofstream(f, std::ios::binary) << bytes.substr(0, bytes.size() - 1);
  try {
    read_npy(f);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("r.npy"), std::string::npos) << e.what();
  }
  std::ofstream(f) << "not an array";
  EXPECT_THROW(read_npy(f), Error);
  EXPECT_THROW(read_npy((t.path / "missing.npy").string()), Error);
}

TEST(Npy, HeaderFieldsInAnyOrderAndSpacing) {
  TempDir t;
  const std::string f = (t.path / "h.npy").string();
  // A version-1 file with the header given and the eight bytes of one float64, 2.5.
  auto write = [&](const std::string& header) {
    std::string b = "\x93NUMPY";
    b += '\x01';
    b += '\x00';
    b += static_cast<char>(header.size() & 0xff);
    b += static_cast<char>(header.size() >> 8);
    b += header;
    const double v = 2.5;
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
    std::ofstream(f, std::ios::binary) << b;
  };
  for (const std::string h : {"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
                              "{'shape':(1,),'fortran_order':False,'descr':'<f8'}",
                              "{ 'fortran_order' :\tFalse , 'descr' : '<f8' , 'shape' : ( 1 , ) }",
                              "{'descr': '<f8', 'fortran_order': False, 'shape': ()}"}) {
    write(h);
    const NpyArray a = read_npy(f);
    EXPECT_EQ(a.data, std::vector<double>{2.5}) << h;
  }
  // A key whose first mention has no value is looked up again further on.
  write("{'descr' 'shape', 'descr': '<f8', 'fortran_order': False, 'shape': (1,)}");
  EXPECT_EQ(read_npy(f).shape, std::vector<int64_t>{1});
  for (const std::string h : {"{'descr': '<f8', 'shape': (1,)}",
                              "{'descr': '<f8', 'fortran_order': True, 'shape': (1,)}",
                              "{'descr': '<f8, 'fortran_order': False, 'shape': (1,)}",
                              "{'descr': '<f8', 'fortran_order': False, 'shape': (1,}",
                              "{'descr': '<f8', 'fortran_order': False, 'shape':",
                              "{'descr': '<i2', 'fortran_order': False, 'shape': (4,)}"}) {
    write(h);
    try {
      read_npy(f);
      ADD_FAILURE() << "no error for " << h;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("h.npy"), std::string::npos) << e.what();
    }
  }
}

TEST(Csv, QuotesOnlyWhatNeedsIt) {
  CsvTable t;
  t.header = {"a", "b"};
  t.rows = {{"1", "x,y"}, {"say \"hi\"", ""}};
  EXPECT_EQ(t.str(), "a,b\n1,\"x,y\"\n\"say \"\"hi\"\"\",\n");
  t.rows.push_back({"only one"});
  EXPECT_THROW(t.str(), Error);
}

TEST(Numbers, FormatRoundTrips) {
  for (double v : {0.0, 0.1, 1.0 / 3.0, 2.5e-300, 123456789.125, -0.07})
    EXPECT_EQ(std::strtod(format_number(v).c_str(), nullptr), v) << format_number(v);
  EXPECT_EQ(format_number(0.25), "0.25");
  EXPECT_EQ(format_duration(42), "42s");
  EXPECT_EQ(format_duration(187), "3m07s");
  EXPECT_EQ(format_duration(8100), "2h15m");
  EXPECT_EQ(format_bytes(512), "512 bytes");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(6.9e6), "6.58 MiB");
  EXPECT_EQ(format_bytes(3.0 * (int64_t{1} << 30)), "3 GiB");
  EXPECT_EQ(format_fixed(0.1484, 3), "0.148");
  EXPECT_EQ(format_fixed(-0.9275, 2), "-0.93");
  EXPECT_EQ(format_fixed(NAN, 3), "n/a");
  EXPECT_EQ(format_fixed(NAN, 3, "-"), "-");
}

TEST(Figures, GnuplotRendersAnSvgAndKeepsTheScript) {
  TempDir t;
  Plot p;
  p.title = "t \"quoted\"";
  p.xlabel = "x";
  p.ylabel = "y";
  p.logy = true;
  Series s;
  s.title = "counts";
  s.x = {1, 2, 3};
  s.y = {10, 0, 1};  // the zero cannot be drawn on a log axis and is left out
  p.series.push_back(s);
  const std::string script = (t.path / "f.gp").string(), svg = (t.path / "f.svg").string();
  EXPECT_EQ(render_plot(p, script, svg), "");
  std::ifstream in(svg);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_NE(ss.str().find("<svg"), std::string::npos);
  EXPECT_TRUE(fs::exists(script));
  // No temporary file is left behind.
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(t.path)) files += e.is_regular_file();
  EXPECT_EQ(files, 2u);
  // A script gnuplot rejects is reported, not thrown, and leaves no figure.
  Series bad = s;
  bad.style = "no-such-style";
  p.series = {bad};
  const std::string svg2 = (t.path / "g.svg").string();
  EXPECT_NE(render_plot(p, (t.path / "g.gp").string(), svg2), "");
  EXPECT_FALSE(fs::exists(svg2));
}
