#!/usr/bin/python3
"""scripts/feature_change.py against values worked out by hand (ctest: FeatureChangeScript)."""
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "scripts", "feature_change.py")
spec = importlib.util.spec_from_file_location("feature_change", SCRIPT)
fc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fc)

HEADER = "site,name,feature,rho,eta,eta_normalized,rank,mean_rate,max_rate\n"


def write(dir_, rows):
    """rows: (site, feature, eta, eta_normalized, mean_rate, max_rate); None rates: no campaign."""
    os.makedirs(dir_, exist_ok=True)
    with open(os.path.join(dir_, "criticality.csv"), "w") as f:
        f.write(HEADER)
        for site, c, eta, eta_n, mean, mx in rows:
            rates = "," if mean is None else f"{mean},{mx}"
            f.write(f"{site},conv,{c},0.1,{eta},{eta_n},{c + 1},{rates}\n")


# Site 1: η 1, 2, 3 (η/mean 0.5, 1, 1.5); rates 0.1, 0.2, 0.3 before, 0.3, 0.2, 0.1 after, as
# eq. 6's factors 2, 1, 2/3 would push them. Site 0 has no campaign rates; site 2 none after.
BEFORE = [("site0", 0, 1, 1, None, None),
          ("site1", 0, 1, 0.5, 0.1, 0.1), ("site1", 1, 2, 1.0, 0.2, 0.2), ("site1", 2, 3, 1.5, 0.3, 0.3),
          ("site2", 0, 1, 1, 0.1, 0.1), ("site2", 1, 1, 1, 0.2, 0.2)]
AFTER = [("site1", 0, 2, 1, 0.3, 0.3), ("site1", 1, 2, 1, 0.2, 0.2), ("site1", 2, 2, 1, 0.1, 0.1)]


class FeatureChange(unittest.TestCase):
    def test_by_hand(self):
        with tempfile.TemporaryDirectory() as d:
            write(f"{d}/before", BEFORE)
            write(f"{d}/after", AFTER)
            sites = fc.compare(fc.read(f"{d}/before/criticality.csv"),
                               fc.read(f"{d}/after/criticality.csv"))
        self.assertEqual([s["site"] for s in sites], ["site1"])
        s = sites[0]
        sd = math.sqrt((0.25 + 0 + 0.25) / 3)  # η / mean: 0.5, 1, 1.5
        self.assertAlmostEqual(s["sd_eta"], sd, places=12)
        self.assertAlmostEqual(s["spearman_eta_max_rate"], 1.0, places=12)
        self.assertAlmostEqual(s["spread_max_rate"][0], sd, places=12)
        self.assertAlmostEqual(s["spread_max_rate"][1], sd, places=12)
        self.assertEqual(s["worst"], (0.3, 0.3))
        # after / before of the mean rates: 3, 1, 1/3 against η/mean 0.5, 1, 1.5.
        self.assertAlmostEqual(s["spearman_factor_change"], -1.0, places=12)

    def test_ties_share_their_ranks(self):
        self.assertEqual(list(fc.ranks(fc.np.array([0.0, 0.0, 1.0]))), [1.5, 1.5, 3.0])
        self.assertAlmostEqual(fc.spearman([1, 2, 3, 4], [1, 3, 2, 4]), 0.8, places=12)
        self.assertTrue(math.isnan(fc.spearman([1, 2, 3], [0, 0, 0])))

    def test_other_features_and_no_common_site_are_errors(self):
        with tempfile.TemporaryDirectory() as d:
            write(f"{d}/before", BEFORE)
            write(f"{d}/after", AFTER[:2])
            with self.assertRaises(ValueError):
                fc.compare(fc.read(f"{d}/before/criticality.csv"), fc.read(f"{d}/after/criticality.csv"))
            write(f"{d}/none", [("site7", 0, 1, 1, 0.1, 0.1)])
            r = subprocess.run([sys.executable, SCRIPT, f"{d}/before", f"{d}/none"],
                               capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("no site has campaign rates in both", r.stderr)
            r = subprocess.run([sys.executable, SCRIPT, f"{d}/before"], capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("usage", r.stderr)


if __name__ == "__main__":
    unittest.main()
