#pragma once
// Shared pieces of the flipguard subcommands. The CLI only parses options and calls the library.
#include <flipguard/data.hpp>
#include <flipguard/network.hpp>
#include <flipguard/train.hpp>

#include <CLI/CLI.hpp>

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


/// The values of --augment (train, harden --method features).
const std::vector<std::string>& augment_modes();

/// The augmentation of `--augment auto|on|shift|affine|off` for a data set: auto is random crops
/// and flips for cifar10 and none for digits; shift is crops of up to 2 pixels without flips;
/// affine is the shift, then a rotation of up to ±10° and a scaling by 0.9 to 1.1.
void set_augment(const std::string& mode, const std::string& data_name, TrainOptions& o);

/// Validator for `--data NAME[:PATH]`.
CLI::Validator data_validator();

/// Log line on stderr.
void log(const std::string& line);

/// The command line as typed, for provenance in output files.
const std::string& command_line();
void set_command_line(int argc, char** argv);

}  // namespace flipguard::cli
