"""Import and export round trip of a torchvision model through flipguard.

Usage: python3 scripts/torchvision_check.py ARCH OUT_DIR [--torchscript FILE] [--flipguard BIN]
                                            [--inputs N]

ARCH is a torchvision model (resnet18, resnet50, mobilenet_v2). Without --torchscript the model
is traced here with random weights (torchvision's initialization, seed 0) and non-trivial
batch-normalization statistics (seeded), so that folding them is tested. Then:

1. `flipguard import` converts the traced module (its own check: the imported network's float
   class scores against LibTorch running the module, on 8 random inputs);
2. `flipguard export --state-dict` writes the imported model's weights back;
3. here, torchvision's ARCH loads that state dict with load_state_dict(strict=True), and its
   class scores on N random inputs (normal, seed 1) are compared with the TorchScript module's:
   largest absolute difference, that relative to the largest score, and top-1 agreement.

Needs Debian's python3-torch and python3-torchvision. Exits non-zero when a step fails or the
relative difference exceeds 1e-4 or a top-1 differs.
"""
import argparse
import os
import subprocess
import sys
import time

import torch
import torchvision


def randomize_batch_norm(module, generator):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=generator) + 0.5
            m.bias.data = torch.randn(c, generator=generator) * 0.2
            m.running_mean = torch.randn(c, generator=generator) * 0.3
            m.running_var = torch.rand(c, generator=generator) + 0.5


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print("(%.1f s)" % (time.time() - start), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch")
    p.add_argument("out")
    p.add_argument("--torchscript")
    p.add_argument("--flipguard", default="build/flipguard")
    p.add_argument("--inputs", type=int, default=8)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ts = a.torchscript
    if ts is None:
        torch.manual_seed(0)
        net = getattr(torchvision.models, a.arch)()
        randomize_batch_norm(net, torch.Generator().manual_seed(2))
        net.eval()
        ts = os.path.join(a.out, a.arch + "_traced.pt")
        torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 224, 224)), ts)
        print("traced torchvision %s with random weights into %s" % (a.arch, ts))
    fgm = os.path.join(a.out, a.arch + ".fgm")
    sd = os.path.join(a.out, a.arch + "_state_dict.pt")
    run([a.flipguard, "import", "--torchscript", ts, "--input", "3x224x224", "--out", fgm])
    run([a.flipguard, "export", "--model", fgm, "--state-dict", sd])

    net = getattr(torchvision.models, a.arch)()
    net.load_state_dict(torch.load(sd), strict=True)
    net.eval()
    module = torch.jit.load(ts).eval()
    x = torch.randn(a.inputs, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = net(x), module(x)
    diff = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    agree = (ours.argmax(1) == theirs.argmax(1)).sum().item()
    print("torchvision %s, exported state dict loaded strict: on %d random inputs the largest "
          "class-score difference to the TorchScript module is %.3g (%.3g of the largest score "
          "%.3g); top-1 agrees on %d of %d" % (a.arch, a.inputs, diff, diff / scale, scale, agree,
                                             a.inputs))
    if not diff <= 1e-4 * scale or agree != a.inputs:
        sys.exit("round trip of %s differs" % a.arch)


if __name__ == "__main__":
    main()
