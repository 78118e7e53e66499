"""Probe: hidden-anomaly recall/precision of each screen round (training part only, its hidden labels)."""
import json, sys, numpy as np
from protoguard.benchmarks.protocol import split_reference, resample_contamination
from protoguard.benchmarks.harness import subsample_train, _MNP_PARAMS as MNP_METHODS
import protoguard.trainer.detectors.mnp as mnpmod
from protoguard.trainer.detectors.mnp import MNPDetector

captured = []
orig = mnpmod.screen_pool
def spy(net, anomalies, pool, confirmed, holdout, rng):
    out = orig(net, anomalies, pool, confirmed, holdout, rng)
    captured.append((pool.cpu().numpy(), out))
    return out
mnpmod.screen_pool = spy
level = float(sys.argv[3])
for name in sys.argv[2].split(','):
    for seed in [int(s) for s in sys.argv[1].split(',')]:
        base = split_reference(f'/work/shared/datasets/tabular/{name}.npz')
        split = subsample_train(resample_contamination(base, level, random_state=seed), 5000, seed)
        captured.clear()
        det = MNPDetector(**{**MNP_METHODS["mnp-rank-screen"], "screen_rounds": 3, "n_members": 1, "random_state": seed})
        det.fit(split.X_train, split.semi_y)
        Xs = ((split.X_train - det.scaler_min_) / det.scaler_scale_).astype(np.float32)
        lab = {r.tobytes(): y for r, y in zip(Xs, split.y_train)}
        for i, (pool, scr) in enumerate(captured):
            y = np.array([lab.get(r.tobytes(), 0) for r in pool])
            if scr is None:
                print(json.dumps({"ds": name, "seed": seed, "round": i, "screen": None})); continue
            drop = ~scr.keep_pool.cpu().numpy()
            print(json.dumps({"ds": name, "seed": seed, "round": i, "true": round(float(y.mean()), 3),
                              "est": round(scr.contamination, 3), "dropped": int(drop.sum()),
                              "prec": round(float(y[drop].mean()), 3) if drop.any() else None,
                              "recall": round(float(y[drop].sum() / max(1, y.sum())), 3)}), flush=True)
