"""Traces torchvision's resnet18 with random weights for the import tests (test_torchscript).

Usage: python3 make_torchvision.py OUT_DIR

Writes OUT_DIR/resnet18_traced.pt (input 1x3x224x224). The weights are torchvision's random
initialization (seed 0); the batch-normalization statistics are set to non-trivial values
(make_models.randomize_batch_norm), so that folding them is tested. Exits with status 2 and a
message when torchvision is missing: `./run setup` installs Debian's python3-torchvision, so the
test that runs this fails rather than skips.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_models  # noqa: E402

try:
    import torchvision
except ImportError:
    sys.exit("torchvision is missing: install Debian's python3-torchvision (./run setup does)")


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    net = torchvision.models.resnet18()
    make_models.randomize_batch_norm(net, g)
    net.eval()
    x = torch.randn(1, 3, 224, 224, generator=g)
    torch.jit.save(torch.jit.trace(net, x), os.path.join(sys.argv[1], "resnet18_traced.pt"))


if __name__ == "__main__":
    main()
