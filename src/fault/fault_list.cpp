// Fault lists to replay (`inject --faults`): the CSV files campaigns write (samples.csv,
// faults.csv) or an integer .npy array of (block, index, bit) rows.
#include <flipguard/campaign.hpp>
#include <flipguard/error.hpp>
#include <flipguard/io.hpp>
#include <flipguard/parse.hpp>
#include <flipguard/report.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace flipguard {

namespace {

/// The cells of one CSV line (RFC 4180: a quoted cell may hold commas and doubled quotes).
std::vector<std::string> csv_cells(const std::string& line, const std::string& path, size_t row) {
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        cells.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cells.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      cells.emplace_back();
    } else if (c != '\r') {
      cells.back() += c;
    }
  }
  if (quoted) fail("fault list '", path, "' line ", row, ": a quoted cell does not end");
  return cells;
}

int64_t integer_cell(const std::string& cell, const std::string& column, const std::string& path,
                     size_t line) {
  const std::optional<int64_t> v = parse_integer(cell);
  if (!v)
    fail("fault list '", path, "' line ", line, ": ", column, " '", cell,
         "' is not a whole number");
  return *v;
}

Fault make_fault(int64_t block, int64_t index, int64_t bit, const std::string& path,
                 const std::string& where) {
  if (block < 0 || block > std::numeric_limits<int>::max() || bit < 0 || bit > 63 || index < 0)
    fail("fault list '", path, "' ", where, ": block ", block, ", index ", index, ", bit ", bit,
         "; expected a block index, an element index and a bit position, none negative");
  return {static_cast<int>(block), index, static_cast<int>(bit)};
}

std::vector<Fault> read_csv_list(const std::string& path) {
  std::istringstream in(read_file(path, "fault list"));
  std::string line;
  size_t n = 0;
  if (!std::getline(in, line)) fail("fault list '", path, "' is empty: expected a header line");
  ++n;
  const std::vector<std::string> header = csv_cells(line, path, n);
  auto column = [&](std::initializer_list<const char*> names) -> size_t {
    for (const char* name : names) {
      const auto it = std::find(header.begin(), header.end(), name);
      if (it != header.end()) return static_cast<size_t>(it - header.begin());
    }
    fail("fault list '", path, "' has no column ", *names.begin(), " in its header (",
         join(header), "); expected the columns block (or site), index and bit, as samples.csv "
         "has them");
  };
  const size_t cb = column({"block", "site"}), ci = column({"index"}), cbit = column({"bit"});
  std::vector<Fault> faults;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line == "\r") continue;
    const std::vector<std::string> cells = csv_cells(line, path, n);
    if (cells.size() != header.size())
      fail("fault list '", path, "' line ", n, " has ", cells.size(), " cells, its header ",
           header.size());
    faults.push_back(make_fault(integer_cell(cells[cb], "block", path, n),
                                integer_cell(cells[ci], "index", path, n),
                                integer_cell(cells[cbit], "bit", path, n), path,
                                "line " + std::to_string(n)));
  }
  if (faults.empty()) fail("fault list '", path, "' has no faults: expected at least one row");
  return faults;
}

std::vector<Fault> read_npy_list(const std::string& path) {
  const NpyArray a = read_npy(path);
  if (a.shape.size() != 2 || a.shape[1] != 3 || a.shape[0] < 1)
    fail("fault list '", path, "' has shape (", join(a.shape), "); expected (n, 3) with n >= 1: ",
         "block, index, bit per row");
  std::vector<Fault> faults;
  for (int64_t r = 0; r < a.shape[0]; ++r) {
    int64_t v[3];
    for (int k = 0; k < 3; ++k) {
      const double x = a.data[static_cast<size_t>(r * 3 + k)];
      if (x != std::floor(x) || std::abs(x) > 9.0e15)
        fail("fault list '", path, "' row ", r, " holds ", x, "; expected whole numbers");
      v[k] = static_cast<int64_t>(x);
    }
    faults.push_back(make_fault(v[0], v[1], v[2], path, "row " + std::to_string(r)));
  }
  return faults;
}

}  // namespace

std::vector<Fault> read_fault_list(const std::string& path) {
  const bool npy = path.size() >= 4 && path.compare(path.size() - 4, 4, ".npy") == 0;
  return npy ? read_npy_list(path) : read_csv_list(path);
}

}  // namespace flipguard
