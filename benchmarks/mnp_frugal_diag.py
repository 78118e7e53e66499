"""Diagnosis of the label-frugal MNP: MNPDetector configs on a few datasets, the harness's split and seeds.

Usage (2 shared cores: one torch thread, low priority)::

    nice -n 15 python benchmarks/mnp_frugal_diag.py out.jsonl 2_annthyroid,27_PageBlocks 42,43 \
        frugal='{"variant":"fixed","validation":"frugal"}' ref='{"variant":"faithful","validation":"reference"}'

Each ``name=json`` is MNPDetector keyword arguments plus three diagnostic keys: ``patch`` ("+"-joined
fixed-variant components switched back to the faithful behaviour, by monkeypatching: ``w`` likelihood
weights attached, ``score`` unweighted score loss, ``dec`` DEC target attached, ``dwa`` DWA weights
attached, ``pre`` 8-row pretraining batches, ``km`` k-means on raw z, ``klmean`` DEC KL averaged per row),
``stop`` (mnp._FRUGAL_STOPPING) and ``fe`` (mnp._FRUGAL_EPOCHS). Prints and appends one JSON line per fit:
test AUC-PR (trapezoid) and AUC-ROC, K, epochs run, best epoch, stop reason, pretraining epochs.
Results and their reading: benchmarks/results/mnp_frugal_diagnosis.md.
"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from protoguard.benchmarks.protocol import split_reference
from protoguard.trainer.detectors.mnp import MNPDetector
from protoguard.trainer.evaluation import detection_metrics

import protoguard.trainer.detectors.mnp as M
_orig = {n: getattr(M, n) for n in ("likelihood_weights", "score_loss", "prototype_loss", "dwa_combine")}
def set_patch(p):
    p = set(filter(None, p.split("+")))
    M.likelihood_weights = (lambda *a, **k: _orig["likelihood_weights"](*a, **{**k, "detach": False})) if "w" in p else _orig["likelihood_weights"]
    M.score_loss = (lambda *a, **k: _orig["score_loss"](*a, **{**k, "weighted": False})) if "score" in p else _orig["score_loss"]
    M.prototype_loss = (lambda *a, **k: _orig["prototype_loss"](*a, **{**k, "detach_target": False})) if "dec" in p else _orig["prototype_loss"]
    M.dwa_combine = (lambda *a, **k: _orig["dwa_combine"](*a, **{**k, "detach": False})) if "dwa" in p else _orig["dwa_combine"]
    import protoguard.trainer.detectors.mnp_losses as L
    L.kl_clustering_loss = (lambda sim, **k: _kl(sim, **{**k, "reduction": "mean"})) if "klmean" in p else _kl
    fr, ip = M.MNPDetector.__dict__["_fit_reconstruction_o"], M.MNPDetector.__dict__["_init_prototypes_o"]
    M.MNPDetector._fit_reconstruction = (lambda self, *a: fr(self, *a[:-1], True)) if "pre" in p else fr
    # _init_prototypes(net, pool, pool_t, pre_val, seed, faithful, n_prototypes): force faithful=True
    M.MNPDetector._init_prototypes = (lambda self, *a: ip(self, *a[:5], True, a[6])) if "km" in p else ip
import protoguard.trainer.detectors.mnp_losses as L0
_kl = L0.kl_clustering_loss
M.MNPDetector._fit_reconstruction_o = M.MNPDetector._fit_reconstruction
M.MNPDetector._init_prototypes_o = M.MNPDetector._init_prototypes
out, dss, seeds = sys.argv[1], sys.argv[2].split(","), [int(s) for s in sys.argv[3].split(",")]
cfgs = [a.split("=", 1) for a in sys.argv[4:]]
from pathlib import Path
D = str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tabular") + "/"
for ds in dss:
    sp = split_reference(D + ds + ".npz")
    for name, js in cfgs:
        kw = json.loads(js)
        set_patch(kw.pop('patch', ''))
        M._FRUGAL_STOPPING = kw.pop('stop', 'holdout'); M._FRUGAL_EPOCHS = kw.pop('fe', 50)
        for seed in seeds:
            t = time.perf_counter()
            det = MNPDetector(random_state=seed, **kw)
            if kw.get("validation") == "reference":
                det.fit(sp.X_train, sp.semi_y, X_val=sp.X_val, y_val=sp.y_val)
            else:
                det.fit(sp.X_train, sp.semi_y)
            fit = time.perf_counter() - t
            s = det.score(sp.X_test)
            m = detection_metrics(sp.y_test, s) if np.all(np.isfinite(s)) else {"auc_pr_trapz": float("nan"), "auc_roc": float("nan")}
            ts = det.training_summary_
            rec = {"ds": ds, "cfg": name, "seed": seed, "ap": round(m["auc_pr_trapz"], 4), "roc": round(m["auc_roc"], 4), "fit": round(fit, 1),
                   "K": ts["n_prototypes"], "ep": ts["epochs"], "best": ts["best_epoch"], "stop": ts["stop_reason"], "pre": ts.get("pretrain_epochs")}
            print(json.dumps(rec), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
