"""PyTorch's own top-1 of a TorchScript ImageNet classifier on an image-folder tree, with
torchvision's standard pre-processing (short side 256, centre crop 224, ImageNet mean and std),
written out here with PIL so that only Debian's python3-torch and python3-pil are needed.

Usage: python3 scripts/pytorch_top1.py MODEL.pt DIR [PREDICTIONS.npy [OTHER.npy]]

DIR/<wnid>/*.JPEG, class index = position of the wnid in sorted order. Prints the top-1
accuracy; saves the predicted class of every image (int64), in the order of
`flipguard eval --data imagenet:DIR --predictions` (the first image of every class, then the
second, ...; files sorted by name), so that the two can be compared image by image. With
OTHER.npy (such as flipguard's `--predictions`), compares them: how many images get the same
class, and for each that does not, its file, label, both predictions and PyTorch's margin
between its two best class scores (a near tie shows as a small margin).
"""
import os
import sys

import numpy as np
import torch
from PIL import Image


def load(path, size=256, crop=224):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if min(w, h) != size:
        if w <= h:
            img = img.resize((size, int(size * h / w)), Image.BILINEAR)
        else:
            img = img.resize((int(size * w / h), size), Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (x - mean) / std


def main():
    model, root = sys.argv[1], sys.argv[2]
    wnids = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    per_class = [sorted(f for f in os.listdir(os.path.join(root, w)) if not f.startswith("."))
                 for w in wnids]
    files = []
    for i in range(max(len(c) for c in per_class)):
        for label, c in enumerate(per_class):
            if i < len(c):
                files.append((os.path.join(root, wnids[label], c[i]), label))
    net = torch.jit.load(model).eval()
    scores = []
    with torch.no_grad():
        for s in range(0, len(files), 100):
            batch = torch.stack([load(f) for f, _ in files[s:s + 100]])
            scores.append(net(batch))
    scores = torch.cat(scores)
    preds = scores.argmax(1).tolist()
    labels = [label for _, label in files]
    print("top-1 %.2f %% on %d images" % (100 * np.mean(np.array(preds) == np.array(labels)),
                                           len(files)))
    if len(sys.argv) > 3:
        np.save(sys.argv[3], np.array(preds, dtype=np.int64))
    if len(sys.argv) > 4:
        other = np.load(sys.argv[4])
        same = np.array(preds) == other
        print("same class as %s for %d of %d images" % (sys.argv[4], same.sum(), len(files)))
        top2 = scores.topk(2, 1).values
        for i in np.flatnonzero(~same):
            print("  %s: label %d, PyTorch %d, other %d, PyTorch's top-2 margin %.4g" %
                  (files[i][0], labels[i], preds[i], other[i], top2[i, 0] - top2[i, 1]))


if __name__ == "__main__":
    main()
