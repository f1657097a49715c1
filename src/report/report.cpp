// .npy, CSV and JSON writers and gnuplot figures.
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/model_file.hpp>
#include <flipguard/parse.hpp>
#include <flipguard/report.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <unistd.h>
#include <sys/wait.h>

namespace flipguard {

namespace {

template <typename T>
std::string npy(const std::vector<T>& data, const std::vector<int64_t>& shape, const char* descr) {
  static_assert(sizeof(T) == 8, "8-byte elements only");
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail(".npy shape has a negative dimension ", d);
    n *= d;
  }
  if (n != static_cast<int64_t>(data.size()))
    fail(".npy shape holds ", n, " elements, the data has ", data.size());
  std::string shape_str = "(";
  for (size_t i = 0; i < shape.size(); ++i) shape_str += std::to_string(shape[i]) + ", ";
  // Python's tuples: "()", "(3,)", "(2, 3)".
  if (shape.size() == 1) shape_str.resize(shape_str.size() - 1);
  if (shape.size() > 1) shape_str.resize(shape_str.size() - 2);
  shape_str += ")";
  std::string header = std::string("{'descr': '") + descr +
                       "', 'fortran_order': False, 'shape': " + shape_str + ", }";
  // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  // The machines flipguard runs on are little-endian, as the descriptor says.
  out.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(T));
  return out;
}

std::string quote_gnuplot(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string npy_bytes(const std::vector<double>& data, const std::vector<int64_t>& shape) {
  return npy(data, shape, "<f8");
}

std::string npy_bytes(const std::vector<int64_t>& data, const std::vector<int64_t>& shape) {
  return npy(data, shape, "<i8");
}

void write_npy(const std::string& path, const std::vector<double>& data,
               const std::vector<int64_t>& shape) {
  write_file_atomic(path, npy_bytes(data, shape));
}

namespace {

/// The value of `key` in a .npy header dictionary ("{'descr': '<f8', ...}"), as written: a quoted
/// string, True, False or a parenthesized tuple.
std::string npy_header_field(const std::string& header, const std::string& key,
                             const std::string& path) {
  const std::string quoted = "'" + key + "'";
  auto skip_spaces = [&](size_t i) {
    while (i < header.size() && std::isspace(static_cast<unsigned char>(header[i]))) ++i;
    return i;
  };
  for (size_t at = header.find(quoted); at != std::string::npos; at = header.find(quoted, at + 1)) {
    size_t i = skip_spaces(at + quoted.size());
    if (i >= header.size() || header[i] != ':') continue;
    i = skip_spaces(i + 1);
    if (i >= header.size()) break;
    size_t end = std::string::npos;
    if (header[i] == '\'') end = header.find('\'', i + 1);
    else if (header[i] == '(') end = header.find(')', i + 1);
    else if (header.compare(i, 4, "True") == 0) end = i + 3;
    else if (header.compare(i, 5, "False") == 0) end = i + 4;
    if (end != std::string::npos) return header.substr(i, end + 1 - i);
  }
  fail("'", path, "': .npy header has no '", key, "' field: ", header);
}

template <typename T>
void npy_elements(const std::string& bytes, size_t offset, std::vector<double>& out) {
  for (size_t i = 0; i < out.size(); ++i) {
    T v;
    std::memcpy(&v, bytes.data() + offset + i * sizeof(T), sizeof(T));
    out[i] = static_cast<double>(v);
  }
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  // The magic first, so that a file of any size (a device that never ends) is refused unread.
  const std::string head = read_file_head(path, 6, ".npy file");
  if (head.compare(0, 6, "\x93NUMPY") != 0)
    fail("'", path, "' is not a .npy file: expected the magic \\x93NUMPY");
  const std::string bytes = read_file(path, ".npy file");
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    fail("'", path, "' is not a .npy file: expected the magic \\x93NUMPY");
  const int major = static_cast<unsigned char>(bytes[6]);
  if (major != 1 && major != 2)
    fail("'", path, "': .npy format version ", major, ": expected 1 or 2");
  const size_t len_bytes = major == 1 ? 2 : 4;
  size_t header_len = 0;
  for (size_t i = 0; i < len_bytes; ++i)
    header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
  const size_t offset = 8 + len_bytes + header_len;
  if (bytes.size() < offset) fail("'", path, "' is truncated inside its .npy header");
  const std::string header = bytes.substr(8 + len_bytes, header_len);
  const std::string descr = npy_header_field(header, "descr", path);
  if (npy_header_field(header, "fortran_order", path) != "False")
    fail("'", path, "': Fortran-ordered .npy arrays are not supported: expected C order");
  NpyArray a;
  std::string dims = npy_header_field(header, "shape", path);
  dims = dims.substr(1, dims.size() - 2);
  std::stringstream ss(dims);
  std::string d;
  int64_t n = 1;
  while (std::getline(ss, d, ',')) {
    const size_t first = d.find_first_not_of(' ');
    if (first == std::string::npos) continue;
    const std::optional<int64_t> v = parse_integer(d.substr(first, d.find_last_not_of(' ') + 1 - first));
    if (!v || *v < 0)
      fail("'", path, "': .npy shape (", dims, ") is not a tuple of sizes");
    // The file's size bounds the elements: a product past it (or past int64) is refused here.
    if (*v != 0 && n > static_cast<int64_t>(bytes.size()) / *v)
      fail("'", path, "': .npy shape (", dims, ") has more elements than its ", bytes.size(),
           " bytes can hold");
    a.shape.push_back(*v);
    n *= *v;
  }
  const std::vector<std::pair<std::string, size_t>> types{
      {"'<f8'", 8}, {"'<f4'", 4}, {"'<i8'", 8}, {"'<i4'", 4}};
  size_t width = 0;
  for (const auto& t : types)
    if (descr == t.first) width = t.second;
  if (!width)
    fail("'", path, "': .npy element type ", descr, ": expected '<f8', '<f4', '<i8' or '<i4'");
  if ((bytes.size() - offset) % width != 0 || static_cast<int64_t>((bytes.size() - offset) / width) != n)
    fail("'", path, "' holds ", bytes.size() - offset, " data bytes, its shape (", dims, ") needs ",
         static_cast<size_t>(n) * width);
  a.data.resize(static_cast<size_t>(n));
  if (descr == "'<f8'") npy_elements<double>(bytes, offset, a.data);
  else if (descr == "'<f4'") npy_elements<float>(bytes, offset, a.data);
  else if (descr == "'<i8'") npy_elements<int64_t>(bytes, offset, a.data);
  else npy_elements<int32_t>(bytes, offset, a.data);
  return a;
}

std::string CsvTable::str() const {
  std::ostringstream os;
  auto row = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      const std::string& c = cells[i];
      if (i) os << ',';
      if (c.find_first_of(",\"\n") == std::string::npos) {
        os << c;
      } else {
        os << '"';
        for (char ch : c) os << (ch == '"' ? "\"\"" : std::string(1, ch));
        os << '"';
      }
    }
    os << '\n';
  };
  row(header);
  for (const auto& r : rows) {
    if (r.size() != header.size())
      fail("CSV row of ", r.size(), " cells under a header of ", header.size());
    row(r);
  }
  return os.str();
}

void write_csv(const std::string& path, const CsvTable& t) { write_file_atomic(path, t.str()); }

void write_json(const std::string& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

nlohmann::json json_number(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

nlohmann::json read_json(const std::string& path, const std::string& what) {
  const std::string text = read_file(path, what);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(what, " '", path, "' is not valid JSON: ", e.what());
  }
}

std::string format_number(double v) {
  if (std::isnan(v)) return "nan";
  char buf[32];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string format_fixed(double v, int places, const std::string& missing) {
  if (std::isnan(v)) return missing;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", places, v);
  return buf;
}

std::string format_duration(double s) {
  char buf[32];
  if (!(s >= 0)) s = 0;
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%ds", int(s));
  return buf;
}

std::string format_bytes(double bytes) {
  static const char* const units[] = {"KiB", "MiB", "GiB", "TiB"};
  char buf[32];
  if (!(bytes >= 1024)) {
    std::snprintf(buf, sizeof buf, "%.0f bytes", std::max(0.0, bytes));
    return buf;
  }
  int u = -1;
  while (bytes >= 1024 && u < 3) {
    bytes /= 1024;
    ++u;
  }
  std::snprintf(buf, sizeof buf, "%.3g %s", bytes, units[u]);
  return buf;
}

std::string gnuplot_script(const Plot& p, const std::string& default_output) {
  std::ostringstream os;
  os << "# flipguard figure; render with: gnuplot THIS_FILE (or -e \"out='file.svg'\")\n";
  os << "if (!exists(\"out\")) out = " << quote_gnuplot(default_output) << "\n";
  os << "set terminal svg size 800,500 dynamic enhanced font 'Helvetica,13' background rgb 'white'\n";
  os << "set output out\n";
  os << "set title " << quote_gnuplot(p.title) << " noenhanced\n";
  os << "set xlabel " << quote_gnuplot(p.xlabel) << " noenhanced\n";
  os << "set ylabel " << quote_gnuplot(p.ylabel) << " noenhanced\n";
  os << "set grid\nset key top right noenhanced\nset style fill transparent solid 0.35 noborder\n";
  if (p.logx) os << "set logscale x\nset format x \"10^{%L}\"\n";
  // Counts of one must stay visible above the bottom of a log axis.
  if (p.logy) os << "set logscale y\nset yrange [0.7:*]\n";
  if (!std::isnan(p.xmin) || !std::isnan(p.xmax))
    os << "set xrange [" << (std::isnan(p.xmin) ? "*" : format_number(p.xmin)) << ":"
       << (std::isnan(p.xmax) ? "*" : format_number(p.xmax)) << "]\n";
  for (size_t s = 0; s < p.series.size(); ++s) {
    const Series& se = p.series[s];
    const bool bars = !se.y_low.empty();
    if (se.x.size() != se.y.size() || (bars && (se.y_low.size() != se.y.size() ||
                                                se.y_high.size() != se.y.size())))
      fail("figure series '", se.title, "' has columns of different lengths");
    os << "$d" << s << " << EOD\n";
    for (size_t i = 0; i < se.x.size(); ++i) {
      // Zero has no place on a log axis: leave such points out rather than fail.
      const bool skip = p.logy && !(se.y[i] > 0);
      os << format_number(se.x[i]) << ' ' << (skip ? "NaN" : format_number(se.y[i]));
      if (bars) os << ' ' << format_number(se.y_low[i]) << ' ' << format_number(se.y_high[i]);
      os << '\n';
    }
    os << "EOD\n";
  }
  os << "plot ";
  for (size_t s = 0; s < p.series.size(); ++s) {
    const Series& se = p.series[s];
    os << (s ? ", \\\n     " : "") << "$d" << s << " using 1:2"
       << (se.y_low.empty() ? "" : ":3:4") << " with " << se.style << " lw 2 title "
       << quote_gnuplot(se.title);
  }
  os << "\n";
  return os.str();
}

std::string render_plot(const Plot& p, const std::string& script_path, const std::string& svg_path) {
  const std::string svg_name = svg_path.substr(svg_path.find_last_of('/') + 1);
  write_file_atomic(script_path, gnuplot_script(p, svg_name));
  const std::string tmp = svg_path + ".tmp." + std::to_string(::getpid());
  // Arguments are passed without a shell: paths may hold any character.
  const std::string out_expr = "out=" + quote_gnuplot(tmp);
  const pid_t pid = fork();
  if (pid < 0) return "cannot start gnuplot: fork failed";
  if (pid == 0) {
    std::freopen("/dev/null", "w", stdout);
    execlp("gnuplot", "gnuplot", "-e", out_expr.c_str(), script_path.c_str(), (char*)nullptr);
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::remove(tmp.c_str());
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
      return "gnuplot was not found (Debian package gnuplot-nox); the script is " + script_path;
    return "gnuplot failed on " + script_path;
  }
  if (std::rename(tmp.c_str(), svg_path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return "cannot rename " + tmp + " to " + svg_path + ": " + std::strerror(errno);
  }
  return {};
}

}  // namespace flipguard
