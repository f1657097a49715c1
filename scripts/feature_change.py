#!/usr/bin/python3
"""How feature optimization changed the measured failure rates of each site's features.

Reads the criticality.csv of `flipguard analyze --campaign` for a model before and after feature
optimization (Algorithm 1) and prints, per site:
  - SD(eta/mean) before, and Spearman(eta, largest rate) before: how well eq. 5 ranks the harm
    that the campaign measured;
  - the spread SD(rate/mean) of the features' largest failure rates before -> after (the
    measured counterpart of Fig. 5b; analyze prints it too);
  - the worst neuron before -> after;
  - Spearman(eta/mean before, after/before of a feature's mean rate): eq. 6 scales feature c's
    outbound weights by mean(eta)/eta_c, so a strongly negative value says each feature's
    measured rate moved the way its factor pushed it.

Usage: scripts/feature_change.py BEFORE_DIR AFTER_DIR [AFTER_DIR ...]
A campaign split over several runs (--sites) gives several analyze directories for the after
model; each site is taken from the first AFTER_DIR that has its rates.
"""
import csv
import sys

import numpy as np


def read(path):
    """{site: (feature -> row)} of the rows that carry campaign rates."""
    sites = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["mean_rate"] == "":
                continue
            sites.setdefault(row["site"], {})[int(row["feature"])] = row
    return sites


def ranks(x):
    """Average ranks, ties sharing theirs (as flipguard's Spearman does)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        r[tied] = r[tied].mean()
    return r


def spearman(x, y):
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spread(x):
    x = np.asarray(x, float)
    return float(np.sqrt(np.mean((x / x.mean() - 1) ** 2))) if x.mean() > 0 else float("nan")


def compare(before, after):
    """One dict a site for the sites with rates in both (read's results), in `before`'s order."""
    out = []
    for site in [s for s in before if s in after]:
        b, a = before[site], after[site]
        if sorted(b) != sorted(a):
            raise ValueError(f"{site}: {len(b)} features before, {len(a)} after: expected the same site")
        c = sorted(b)
        col = lambda rows, key: np.array([float(rows[k][key]) for k in c])
        mean_b, mean_a = col(b, "mean_rate"), col(a, "mean_rate")
        ratio = np.divide(mean_a, mean_b, out=np.full_like(mean_a, np.nan), where=mean_b > 0)
        ok = np.isfinite(ratio)
        out.append({
            "site": site,
            "sd_eta": spread(col(b, "eta")),
            "spearman_eta_max_rate": spearman(col(b, "eta"), col(b, "max_rate")),
            "spread_max_rate": (spread(col(b, "max_rate")), spread(col(a, "max_rate"))),
            "worst": (col(b, "max_rate").max(), col(a, "max_rate").max()),
            "spearman_factor_change": spearman(col(b, "eta_normalized")[ok], ratio[ok]),
        })
    return out


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: scripts/feature_change.py BEFORE_DIR AFTER_DIR [AFTER_DIR ...]")
    before = read(f"{argv[1]}/criticality.csv")
    after = {}
    for d in argv[2:]:
        for site, rows in read(f"{d}/criticality.csv").items():
            after.setdefault(site, rows)
    try:
        sites = compare(before, after)
    except ValueError as e:
        sys.exit(str(e))
    if not sites:
        sys.exit(f"no site has campaign rates in both {argv[1]} and {' '.join(argv[2:])}: "
                 "expected `flipguard analyze --campaign` results")
    print("site   SD(eta/mean)  Spearman(eta,max)  spread of max rate  worst before -> after"
          "  Spearman(eta/mean, mean-rate ratio)")
    for r in sites:
        print(f"{r['site']:6} {r['sd_eta']:12.3f}  {r['spearman_eta_max_rate']:17.3f}  "
              f"{r['spread_max_rate'][0]:8.3f} -> {r['spread_max_rate'][1]:.3f}  "
              f"{100 * r['worst'][0]:8.2f} % -> {100 * r['worst'][1]:.2f} %  "
              f"{r['spearman_factor_change']:12.3f}")


if __name__ == "__main__":
    main(sys.argv)
