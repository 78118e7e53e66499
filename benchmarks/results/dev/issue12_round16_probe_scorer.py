"""Probe: does a fitted member's anomaly score find the hidden anomalies of the pool better than the
normality screen? Training part only (its hidden labels)."""
import json, sys, numpy as np
from protoguard.benchmarks.protocol import split_reference, resample_contamination
from protoguard.benchmarks.harness import subsample_train, _MNP_PARAMS as P
from protoguard.trainer.detectors.mnp import MNPDetector
level = float(sys.argv[3])
for name in sys.argv[2].split(','):
    for seed in [int(s) for s in sys.argv[1].split(',')]:
        base = split_reference(f'/work/shared/datasets/tabular/{name}.npz')
        split = subsample_train(resample_contamination(base, level, random_state=seed), 5000, seed)
        det = MNPDetector(**{**P["mnp-rank-screen"], "screen_pool": False, "n_members": 1, "random_state": seed})
        det.fit(split.X_train, split.semi_y)
        un = split.semi_y == 0
        s = np.asarray(det.score(split.X_train[un])); y = split.y_train[un]
        order = np.argsort(-s)
        out = {"ds": name, "seed": seed, "true": round(float(y.mean()), 3)}
        for share in (0.1, 0.25):
            k = int(share * len(s)); top = order[:k]
            out[f"prec@{share}"] = round(float(y[top].mean()), 3); out[f"rec@{share}"] = round(float(y[top].sum() / y.sum()), 3)
        print(json.dumps(out), flush=True)
