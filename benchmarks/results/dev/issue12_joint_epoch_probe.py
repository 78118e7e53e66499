"""Probe (validation part only): member 0's validation AUC-PR at every joint epoch, product params,
one member, patience large enough to run 40 epochs; also the hold-out error and where the product's
stopper (patience 15, min delta 1e-4) would have stopped."""
import sys, math, json, torch; torch.set_num_threads(1)
import numpy as np
from protoguard.benchmarks.protocol import split_reference
from protoguard.benchmarks.harness import subsample_train
from protoguard.trainer.detectors import mnp_training as T
from protoguard.trainer.detectors.mnp import MNPDetector
from protoguard.trainer.training import PRODUCT_MNP_PARAMS
from protoguard.trainer.evaluation import auc_pr_trapz
seed = int(sys.argv[2])
orig = T.forward_scores
for name in sys.argv[1].split(","):
    max_rows = 50000 if name == "11_donors" else None
    part = subsample_train(split_reference(f"../shared/datasets/tabular/{name}.npz"), max_rows, seed)
    p = {**PRODUCT_MNP_PARAMS, "n_members": 1, "max_epochs": 40, "patience": 1000}
    det = MNPDetector(**p, random_state=seed)
    curve = []
    def patched(net, X):
        out = orig(net, X)
        Xv = torch.from_numpy(((part.X_val - det.scaler_min_) / det.scaler_scale_).astype(np.float32))
        curve.append(round(float(auc_pr_trapz(part.y_val, orig(net, Xv))), 4))
        net.train()
        return out
    T.forward_scores = patched
    det.fit(part.X_train, part.semi_y)
    T.forward_scores = orig
    errs = [h["val_error"] for h in det.history_]
    best, best_ep, bad, stop = math.inf, 0, 0, None
    for ep, v in enumerate(errs, 1):
        if v < best - 1e-4: best, best_ep, bad = v, ep, 0
        else:
            bad += 1
            if bad >= 15 and stop is None: stop = best_ep
    print(json.dumps({"dataset": name, "seed": seed, "n_labelled": int(part.semi_y.sum()), "stop_at": stop or best_ep,
                      "val_auc_pr": curve, "holdout_error": [round(v, 4) for v in errs]}), flush=True)
