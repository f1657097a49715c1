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

/// Validator for `--data NAME[:PATH]`.
CLI::Validator data_validator();

/// Prints the figures of a campaign's summary.json, as inject does at its end.
void print_campaign_summary(const nlohmann::json& summary);

/// Log line on stderr.
void log(const std::string& line);

/// The command line as typed, for provenance in output files.
const std::string& command_line();
void set_command_line(int argc, char** argv);

}  // namespace flipguard::cli
