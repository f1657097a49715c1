"""Loads a state dict that `flipguard export` wrote into the eager network it came from.

Usage: python3 check_state_dict.py CLASS STATE_DICT INPUTS OUTPUTS

CLASS is a network of make_models.py (beside this file), or torchvision.NAME for one of
torchvision's models (e.g. torchvision.resnet18). The state dict is read with torch.load
and loaded with load_state_dict(strict=True), so every key and shape must match the module's.
INPUTS holds one tensor (written by torch::pickle_save); the network's outputs on it, in
evaluation mode, are written to OUTPUTS with torch.save.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_models  # noqa: E402


def main():
    name, state_dict, inputs, outputs = sys.argv[1:5]
    if name.startswith("torchvision."):
        import torchvision
        net = getattr(torchvision.models, name[len("torchvision."):])()
    else:
        net = getattr(make_models, name)()
    net.load_state_dict(torch.load(state_dict), strict=True)
    net.eval()
    with torch.no_grad():
        torch.save(net(torch.load(inputs)), outputs)


if __name__ == "__main__":
    main()
