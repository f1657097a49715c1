// flipguard: measures, predicts and improves the bit-flip resilience of CNNs.
#include "cli.hpp"
#include "progress.hpp"

#include <flipguard/allocator.hpp>
#include <flipguard/distributed.hpp>
#include <flipguard/error.hpp>
#include <flipguard/interrupt.hpp>
#include <flipguard/io.hpp>
#include <flipguard/parse.hpp>
#include <flipguard/version.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <iostream>
#include <utility>
#include <thread>

namespace flipguard::cli {

namespace {
std::string g_command_line;
}

void log(const std::string& line) {
  ProgressLine::before_log();
  std::cerr << line << std::endl;
  ProgressLine::after_log();
}

const std::string& command_line() { return g_command_line; }

void set_command_line(int argc, char** argv) {
  g_command_line = "flipguard";
  for (int i = 1; i < argc; ++i) g_command_line += std::string(" ") + argv[i];
}

namespace {

/// A number as the user would write it: 1, 0.5, 1e-09.
std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

/// A validator that checks `ok` on the option's value read as a finite number; `rule` is the
/// rule in words ("must be at least 1"), `brief` its short form for --help.
CLI::Validator number_rule(std::function<bool(double)> ok, const std::string& rule,
                           const std::string& brief) {
  return CLI::Validator(
      [ok, rule](std::string& value) -> std::string {
        const std::optional<double> v = parse_number(value);
        if (!v) return "must be a number, got '" + value + "'";
        return ok(*v) ? std::string() : rule + ", got " + value;
      },
      brief);
}

}  // namespace

CLI::Validator at_least(double min) {
  return number_rule([min](double v) { return v >= min; }, "must be at least " + number_text(min),
                     ">=" + number_text(min));
}

CLI::Validator positive() {
  return number_rule([](double v) { return v > 0; }, "must be greater than 0", ">0");
}

CLI::Validator in_range(double lo, double hi) {
  return number_rule([lo, hi](double v) { return v >= lo && v <= hi; },
                     "must be between " + number_text(lo) + " and " + number_text(hi),
                     number_text(lo) + ".." + number_text(hi));
}

CLI::Validator data_validator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        try {
          parse_data_spec(value);
        } catch (const Error& e) {
          return e.what();
        }
        return {};
      },
      "NAME[:PATH]");
}

}  // namespace flipguard::cli

namespace {

/// For an unexpected argument, lists the options the subcommand does take.
std::string valid_options(const CLI::App& app) {
  const CLI::App* sub = &app;
  for (const CLI::App* s : app.get_subcommands()) sub = s;
  std::string list;
  for (const CLI::Option* o : sub->get_options()) {
    const std::string name = o->get_name(false, true);
    if (name.empty() || name[0] != '-') continue;
    list += (list.empty() ? "" : ", ") + o->get_name();
  }
  for (const CLI::Option* o : app.get_options()) {
    if (sub == &app) break;
    const std::string name = o->get_name();
    if (name.rfind("--", 0) == 0 && name != "--help") list += ", " + name;
  }
  return list;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace flipguard;
  cli::set_command_line(argc, argv);
  // SIGINT and SIGTERM: no half-written files; campaigns stop with a checkpoint.
  install_stop_handlers();
  if (!keep_freed_memory())
    std::cerr << "flipguard: warning: the C library refused the allocator settings "
                 "(mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD); campaigns may run slower\n";
  try {
    dist_init(&argc, &argv);
  } catch (const Error& e) {
    std::cerr << "flipguard: error: " << e.what() << "\n";
    return 1;
  }
  // Every way out of main leaves the MPI job (a no-op without one).
  struct Finalize {
    ~Finalize() { dist_finalize(); }
  } finalize;
  CLI::App app{"flipguard: bit-flip resilience of convolutional neural networks"};
  app.require_subcommand(1);
  // Every option keeps its default as text, for --help and for recipe files (--write-config).
  app.option_defaults()->always_capture_default();
  // Processes of an MPI job on the same machine share its cores.
  unsigned threads = std::max(1u, std::thread::hardware_concurrency() /
                                      static_cast<unsigned>(std::max(1, dist_local_size())));
  app.add_option("--threads", threads, "worker threads (default: all cores)")
      ->check(cli::in_range(1, 1024))
      ->capture_default_str();
  app.set_config("--config", "",
                 "read the options from a recipe file (TOML or INI: `key=value` lines under a "
                 "`[subcommand]` table), as --write-config writes it; options given on the command "
                 "line take precedence");
  std::string write_config;
  app.add_option("--write-config", write_config,
                 "write the options of this run (given or default) to a recipe file, then run")
      ->configurable(false);
  bool quiet = false;
  app.add_flag("--quiet", quiet,
               "no progress (by default a line redrawn in place on a terminal, otherwise a line "
               "every 30 s)");
  app.add_flag("--version", "print the version, the LibTorch it runs on, the vector instructions "
                            "it uses and the git commit it was built from, and exit");
  cli::Action action;
  cli::add_zoo(app, action);
  cli::add_train(app, action);
  cli::add_eval(app, action);
  cli::add_quantize(app, action);
  cli::add_inject(app, action);
  cli::add_analyze(app, action);
  cli::add_harden(app, action);
  cli::add_reproduce(app, action);
  cli::add_import(app, action);
  cli::add_export(app, action);
  // Options of the program (--threads) may also follow the subcommand.
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) sub->fallthrough();
  // CLI11 reports a mistyped subcommand only as a missing one: name it and list the valid ones.
  std::vector<std::string> names;
  for (const CLI::App* sub : std::as_const(app).get_subcommands(nullptr)) names.push_back(sub->get_name());
  const std::string subcommands = join(names);
  // --version answers alone, before a subcommand and its required options are asked for.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--version") {
      if (dist_rank() == 0) std::cout << build_info_text();
      return 0;
    }
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads") { ++i; continue; }
    if (arg.rfind("-", 0) == 0) continue;
    if (std::find(names.begin(), names.end(), arg) == names.end()) {
      std::cerr << "flipguard: unknown subcommand '" << arg << "': expected one of " << subcommands << "\n";
      return 2;
    }
    break;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ExtrasError& e) {
    std::cerr << "flipguard: " << e.what() << "; valid options: " << valid_options(app) << "\n";
    return 2;
  } catch (const CLI::ValidationError& e) {
    // CLI11 writes "--runs: must be at least 1, got 0"; users read "--runs must be ...".
    std::string what = e.what();
    const size_t colon = what.find(": ");
    if (what.rfind("-", 0) == 0 && colon != std::string::npos) what.erase(colon, 1);
    std::cerr << "flipguard: " << what << "\n";
    return 2;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "flipguard: " << e.what() << "\n";
    if (dynamic_cast<const CLI::RequiredError*>(&e) && app.get_subcommands().empty())
      std::cerr << "subcommands: " << subcommands << " (flipguard --help)\n";
    return 2;
  }
  cli::set_progress_mode(quiet, dist_rank() == 0);
  const CLI::App* sub = app.get_subcommands().front();
  cli::set_recipe(cli::recipe_text(app, *sub));
  // In an MPI job the others would wait for the failed process forever: end them all.
  const std::string who = dist_size() > 1 ? " (rank " + std::to_string(dist_rank()) + ")" : "";
  auto failed = [&](const std::string& what) {
    std::cerr << "flipguard: error" << who << ": " << what << "\n";
    if (dist_size() > 1) dist_abort(1);
    return 1;
  };
  try {
    if (!write_config.empty() && dist_rank() == 0) write_file_atomic(write_config, cli::recipe());
    torch::set_num_threads(static_cast<int>(threads));
    action();
  } catch (const Stopped& e) {
    // Stopped on SIGINT or SIGTERM with its state saved: the exit status the signal would give.
    std::cerr << "flipguard" << who << ": " << e.what() << "\n";
    return 128 + e.signal();
  } catch (const Error& e) {
    return failed(e.what());
  } catch (const c10::Error& e) {
    return failed(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return failed(e.what());
  }
  return 0;
}
