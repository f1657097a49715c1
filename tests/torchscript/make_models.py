"""Builds the small TorchScript modules that the import tests read (test_torchscript).

Usage: python3 make_models.py OUT_DIR

Writes, each with torch.jit.save:
  every_op_traced.pt    traced; every operation `flipguard import` supports
  every_op_scripted.pt  the same network, scripted
  sigmoid_traced.pt     traced; uses torch.sigmoid, which flipguard does not support
  grouped_traced.pt     traced; a convolution with groups = 2
  squeezenet_traced.pt  traced; torchvision's SqueezeNet 1.1 layout (random weights, 1000
                        classes, 3x224x224 input), written out here as torchvision defines it
  residual_traced.pt    traced; residual additions (in place and not, with and without a ReLU
                        behind), a projection shortcut, an expand-depthwise-project unit with
                        ReLU6 (nn.ReLU6 and F.relu6), hardtanh(-1, 1), batch normalizations,
                        adaptive average pooling to 1x1, flatten, dropout and torch.addmm
  residual_scripted.pt  the same network, scripted
  alpha_add_traced.pt   traced; torch.add(a, b, alpha=2), which flipguard refuses
  aliased_add_scripted.pt  scripted; `c = a; a += b` then c read: the in-place sum changes
                        what c holds, which flipguard refuses
  tiny_fire_traced.pt   traced; SqueezeNet 1.1 in miniature (3x224x224 input, 3 classes), for
                        the test of `reproduce --benchmark imagenet-sample`, trained here to
                        tell the test's images apart by colour (class c: +120 in BGR channel c)
The network's weights are random (seed 0) and its batch-normalization statistics are set
to non-trivial values, so that folding them is tested.
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class EveryOp(nn.Module):
    """conv (stride, padding, dilation) + batch norm + ReLU, max pooling with ceil_mode,
    a two-branch concatenation, average pooling, adaptive average pooling (to 2x2 and to 1x1),
    flatten, dropout, linear, view."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.left = nn.Conv2d(8, 6, 1)
        self.right = nn.Conv2d(8, 6, 3, padding=2, dilation=2)
        self.avg = nn.AvgPool2d(2)
        self.down = nn.Conv2d(12, 16, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(16 * 2 * 2, 12), nn.ReLU())
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)                                            # 8 x 10 x 10
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], 1)  # 12 x 10 x 10
        x = self.avg(x)                                             # 12 x 5 x 5
        x = F.relu(self.bn(self.down(x)))                           # 16 x 5 x 5
        x = F.adaptive_avg_pool2d(F.max_pool2d(x, 2, 1), (2, 2))    # 16 x 4 x 4, then 2 x 2
        x = F.adaptive_avg_pool2d(x, (2, 2))                        # the identity
        x = torch.flatten(x, 1)
        x = self.head(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv(x)).mean((2, 3))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, groups=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))


class ConvBN(nn.Sequential):
    """Convolution without bias, then batch normalization (torchvision's layout)."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                   bias=False), nn.BatchNorm2d(cout))


class Residual(nn.Module):
    """ResNet's basic blocks and MobileNetV2's inverted residual in miniature (3x16x16 input):
    every operation of issue 27 that `flipguard import` folds or turns into a block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, 8, 3), nn.ReLU(inplace=True))
        self.unit1 = nn.ModuleDict({"conv1": ConvBN(8, 8, 3), "conv2": ConvBN(8, 8, 3)})
        self.unit2 = nn.ModuleDict({"conv1": ConvBN(8, 16, 3, stride=2),
                                    "conv2": ConvBN(16, 16, 3),
                                    "downsample": ConvBN(8, 16, 1, stride=2)})
        self.expand = nn.Sequential(ConvBN(16, 32, 1), nn.ReLU6(inplace=True))
        self.depthwise = ConvBN(32, 32, 3, groups=32)
        self.project = ConvBN(32, 16, 1)
        self.dw2 = ConvBN(16, 16, 3, stride=2, groups=16)
        self.pointwise = ConvBN(16, 24, 1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.stem(x)                                   # 8 x 16 x 16
        out = F.relu(self.unit1["conv1"](x))
        out = self.unit1["conv2"](out)
        out += x                                           # aten::add_
        x = F.relu(out)
        out = F.relu(self.unit2["conv1"](x))               # 16 x 8 x 8
        x = F.relu(self.unit2["conv2"](out) + self.unit2["downsample"](x))
        y = F.hardtanh(self.depthwise(self.expand(x)), -1.0, 1.0)
        x = x + self.project(y)                            # a linear bottleneck: no ReLU
        x = F.relu6(self.pointwise(self.dw2(x)))           # 24 x 4 x 4
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return torch.addmm(self.fc.bias, self.dropout(x), self.fc.weight.t())


class AlphaAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.add(self.a(x), self.b(x), alpha=2).mean((2, 3))


class AliasedAdd(AlphaAdd):
    def forward(self, x):
        a = self.a(x)
        c = a
        a += self.b(x)
        return (a + c).mean((2, 3))


class Fire(nn.Module):
    """torchvision.models.squeezenet.Fire."""

    def __init__(self, inplanes, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    """torchvision.models.squeezenet1_1 (version 1.1, 1000 classes)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(512, num_classes, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class TinyFire(nn.Module):
    """SqueezeNet 1.1's layout in miniature: 224x224 inputs, two fire modules, 3 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=4), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(8, 4, 6, 6),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(12, 4, 6, 6))
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(12, 3, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def train_tiny_fire(net, generator):
    """A few Adam steps on images like the test's: uniform noise in [0, 120) plus 120 in the
    class's channel (BGR order as OpenCV writes them, so class c is RGB channel 2 - c),
    ImageNet-normalized."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for _ in range(60):
        labels = torch.randint(0, 3, (12,), generator=generator)
        x = torch.rand(12, 3, 224, 224, generator=generator) * 120
        for i, c in enumerate(labels.tolist()):
            x[i, 2 - c] += 120
        x = (x / 255 - mean) / std
        loss = F.cross_entropy(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def randomize_batch_norm(module, generator):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=generator) + 0.5
            m.bias.data = torch.randn(c, generator=generator) * 0.2
            m.running_mean = torch.randn(c, generator=generator) * 0.3
            m.running_var = torch.rand(c, generator=generator) + 0.5
            m.num_batches_tracked.fill_(7)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = save_traced_and_scripted(EveryOp(), (2, 3, 20, 20), f"{out}/every_op", g)
    torch.jit.save(torch.jit.trace(Sigmoid().eval(), x), f"{out}/sigmoid_traced.pt")
    torch.jit.save(torch.jit.trace(Grouped().eval(), torch.randn(1, 4, 8, 8)),
                   f"{out}/grouped_traced.pt")
    squeezenet = SqueezeNet11().eval()
    torch.jit.save(torch.jit.trace(squeezenet, torch.randn(1, 3, 224, 224, generator=g)),
                   f"{out}/squeezenet_traced.pt")
    tiny = train_tiny_fire(TinyFire(), g)
    torch.jit.save(torch.jit.trace(tiny, torch.randn(1, 3, 224, 224, generator=g)),
                   f"{out}/tiny_fire_traced.pt")
    # Last, so that the random draws of the modules above stay as they were.
    x = save_traced_and_scripted(Residual(), (2, 3, 16, 16), f"{out}/residual", g)
    torch.jit.save(torch.jit.trace(AlphaAdd().eval(), x), f"{out}/alpha_add_traced.pt")
    torch.jit.save(torch.jit.script(AliasedAdd().eval()), f"{out}/aliased_add_scripted.pt")


def save_traced_and_scripted(net, input_shape, stem, generator):
    """Randomizes the batch normalizations, writes STEM_traced.pt and STEM_scripted.pt; returns
    the tracing input."""
    randomize_batch_norm(net, generator)
    net.eval()
    x = torch.randn(*input_shape, generator=generator)
    torch.jit.save(torch.jit.trace(net, x), f"{stem}_traced.pt")
    torch.jit.save(torch.jit.script(net), f"{stem}_scripted.pt")
    return x


if __name__ == "__main__":
    main()
