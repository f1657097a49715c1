// Recipe files: the options of a run as a TOML file that `--config` reads back (CLI11's own
// reader), so a run can be repeated or edited.
#include "cli.hpp"

#include <flipguard/version.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace flipguard::cli {

namespace {

std::string g_recipe;

/// Options that describe the program, not the run.
bool left_out(const CLI::Option& o) {
  const std::string n = o.get_name();
  return !o.get_configurable() || n.rfind("--", 0) != 0 || n == "--help" || n == "--version" ||
         n == "--config" || n == "--write-config";
}

bool bare(const std::string& v) {
  if (v == "true" || v == "false") return true;
  try {
    size_t used = 0;
    const double d = std::stod(v, &used);
    return used == v.size() && std::isfinite(d);
  } catch (const std::exception&) {
    return false;
  }
}

std::string toml_value(const std::string& v) {
  if (bare(v)) return v;
  std::string q = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

/// `key=value` lines of the options of `app` itself (not of its subcommands): those given, then
/// the others' defaults as comments (`# key=value`), to see and edit. A default is not written
/// as a setting: some mean "not set" in a way the option's own check refuses (--top-features 0).
std::string option_lines(const CLI::App& app) {
  std::string given, defaults;
  for (const CLI::Option* o : app.get_options()) {
    if (left_out(*o)) continue;
    std::vector<std::string> values;
    const bool set = o->count() > 0;
    if (o->get_expected_max() == 0) {
      values = {set ? "true" : "false"};
    } else if (set) {
      values = o->results();
    } else {
      const std::string d = o->get_default_str();
      if (d.empty() || d == "[]") continue;
      values = {d};
    }
    std::string line = (set ? "" : "# ") + o->get_single_name() + "=";
    if (values.size() == 1 && o->get_expected_max() <= 1) {
      line += toml_value(values[0]);
    } else {
      line += "[";
      for (size_t i = 0; i < values.size(); ++i) line += (i ? ", " : "") + toml_value(values[i]);
      line += "]";
    }
    (set ? given : defaults) += line + "\n";
  }
  return given + defaults;
}

}  // namespace

std::string recipe_text(const CLI::App& app, const CLI::App& sub) {
  return "# flipguard " + build_info()["version"].get<std::string>() +
         " recipe: `flipguard " + sub.get_name() + " --config FILE` repeats this run\n" +
         option_lines(app) + "[" + sub.get_name() + "]\n" + option_lines(sub);
}

void set_recipe(const std::string& text) { g_recipe = text; }

const std::string& recipe() { return g_recipe; }

}  // namespace flipguard::cli
