#pragma once
// Shared pieces of the flipguard subcommands. The CLI only parses options and calls the library.
#include <flipguard/data.hpp>
#include <flipguard/network.hpp>
#include <flipguard/train.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace flipguard::cli {

/// A subcommand's action, run after parsing succeeded.
using Action = std::function<void()>;

/// Each subcommand registers its options on `app` and stores its action in `action`.
void add_zoo(CLI::App& app, Action& action);
void add_train(CLI::App& app, Action& action);
void add_eval(CLI::App& app, Action& action);
void add_quantize(CLI::App& app, Action& action);
void add_inject(CLI::App& app, Action& action);
void add_analyze(CLI::App& app, Action& action);
void add_harden(CLI::App& app, Action& action);
void add_reproduce(CLI::App& app, Action& action);
void add_import(CLI::App& app, Action& action);
void add_export(CLI::App& app, Action& action);

/// Validators whose errors say the rule in words: "--runs must be at least 1, got 0" (CLI11's
/// own ranges print the type's limits, a 309-digit number for a double).
CLI::Validator at_least(double min);
/// A number greater than 0 (a real-valued option; integer ones take at_least(1)).
CLI::Validator positive();
/// A number within [lo, hi].
CLI::Validator in_range(double lo, double hi);

/// Validator for `--data NAME[:PATH]`.
CLI::Validator data_validator();

/// Prints the figures of a campaign's summary.json, as inject does at its end.
void print_campaign_summary(const nlohmann::json& summary);

/// Log line on stderr.
void log(const std::string& line);

/// The options of a run of subcommand `sub` as a recipe file (TOML): the program's options, then
/// a `[sub]` table of the subcommand's, each as given or at its default. `flipguard SUB --config
/// FILE` reads it back and repeats the run.
std::string recipe_text(const CLI::App& app, const CLI::App& sub);
/// The recipe of this run (set once the options are parsed), for summary.json's `config`.
void set_recipe(const std::string& text);
const std::string& recipe();

/// The command line as typed, for provenance in output files.
const std::string& command_line();
void set_command_line(int argc, char** argv);

}  // namespace flipguard::cli
