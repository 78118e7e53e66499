"""Probe: the screen's contamination estimate vs the pool's true hidden-anomaly share, and the
share of true anomalies among dropped rows. Training part only (its hidden labels); no val/test."""
import json, sys, numpy as np, torch
from protoguard.benchmarks.protocol import split_reference
import protoguard.trainer.detectors.mnp as mnpmod
from protoguard.trainer.detectors.mnp import MNPDetector
from protoguard.trainer.training import PRODUCT_MNP_PARAMS
from protoguard.benchmarks.harness import subsample_train

captured = []
orig = mnpmod.screen_pool
def spy(net, anomalies, pool, confirmed, holdout, rng):
    out = orig(net, anomalies, pool, confirmed, holdout, rng)
    captured.append((pool.cpu().numpy(), None if out is None else out))
    return out
mnpmod.screen_pool = spy
for name in sys.argv[2].split(','):
    for seed in [int(s) for s in sys.argv[1].split(',')]:
        split = subsample_train(split_reference(f'/work/shared/datasets/tabular/{name}.npz'), 50000, seed)
        lab = {r.tobytes(): y for r, y in zip(split.X_train, split.y_train)}
        captured.clear()
        det = MNPDetector(**{**PRODUCT_MNP_PARAMS, "n_members": 1, "random_state": seed})
        det.fit(split.X_train, split.semi_y)
        un = split.semi_y == 0
        true_share = float(split.y_train[un].mean())
        for pool, scr in captured:
            y = np.array([lab.get(r.tobytes(), 0) for r in pool])
            if scr is None:
                print(json.dumps({"ds": name, "seed": seed, "screen": None})); continue
            keep = scr.keep_pool.cpu().numpy()
            drop = ~keep
            print(json.dumps({"ds": name, "seed": seed, "true_share": round(true_share, 4),
                              "est": round(scr.contamination, 4), "dropped": int(drop.sum()),
                              "anom_in_drop": round(float(y[drop].mean()), 3) if drop.any() else None,
                              "recall_of_hidden": round(float(y[drop].sum() / max(1, y.sum())), 3)}), flush=True)
