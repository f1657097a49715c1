// flipguard zoo: the known architectures with their activation sites and weight tensors.
#include "cli.hpp"

#include <flipguard/zoo.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

namespace flipguard::cli {

void add_zoo(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("zoo", "list the architectures, their activation sites and shapes");
  auto json_out = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json_out, "print JSON");
  cmd->callback([&action, json_out] {
    action = [json_out] {
      nlohmann::json all = nlohmann::json::array();
      for (const auto& name : zoo_names()) {
        const Network net = build_zoo(name);
        const auto shapes = net.shapes();
        nlohmann::json sites = nlohmann::json::array();
        int64_t neurons = 0;
        for (int s : net.sites()) {
          sites.push_back({{"index", s}, {"block", net.blocks[s].name},
                           {"shape", {shapes[s].c, shapes[s].h, shapes[s].w}},
                           {"neurons", shapes[s].numel()}});
          neurons += shapes[s].numel();
        }
        nlohmann::json weights = nlohmann::json::array();
        std::string weight_line;
        for (size_t b = 0; b < net.blocks.size(); ++b) {
          if (!net.blocks[b].weighted()) continue;
          const auto shape = net.blocks[b].weight.sizes().vec();
          weights.push_back({{"block", b}, {"name", net.blocks[b].name}, {"shape", shape},
                             {"weights", net.blocks[b].weight.numel()}});
          std::string dims;
          for (int64_t d : shape) dims += (dims.empty() ? "" : "x") + std::to_string(d);
          weight_line += (weight_line.empty() ? "" : ", ") + std::to_string(b) + " " +
                         net.blocks[b].name + " " + dims;
        }
        all.push_back({{"arch", name}, {"description", zoo_description(name)},
                       {"input", {net.input.c, net.input.h, net.input.w}},
                       {"classes", net.num_classes()}, {"sites", sites},
                       {"neurons", neurons}, {"weights", weights}});
        if (*json_out) continue;
        std::printf("%s: %s\n  input %s, %lld classes, %lld neurons in %zu sites\n", name.c_str(),
                    zoo_description(name).c_str(), net.input.str().c_str(),
                    (long long)net.num_classes(), (long long)neurons, net.sites().size());
        for (int s : net.sites())
          std::printf("  site %d  %-8s %-10s %7lld neurons\n", s, net.blocks[s].name.c_str(),
                      shapes[s].str().c_str(), (long long)shapes[s].numel());
        std::printf("  weighted blocks (--target weights --sites): %s\n", weight_line.c_str());
      }
      if (*json_out) std::cout << all.dump(2) << "\n";
    };
  });
}

}  // namespace flipguard::cli
