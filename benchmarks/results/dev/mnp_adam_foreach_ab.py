"""A/B of torch's Adam forms on one product MNP fit: same scores? how long? (stop 28)

Run from outside the repository root (so the installed package is imported), venv python:
    python mnp_adam_foreach_ab.py default|foreach|fused <dataset stem> [torch threads]
Prints the fit time and a hash of the test-part scores: equal hashes mean bit-identical models.
"""
import hashlib
import sys
import time
from pathlib import Path

import torch

from protoguard.benchmarks.protocol import split_reference
from protoguard.trainer.detectors import mnp_training
from protoguard.trainer.detectors.mnp import MNPDetector
from protoguard.trainer.training import PRODUCT_MNP_PARAMS

mode, stem = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
extra = {"default": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[mode]


def adam(self, params, lr=None):
    return torch.optim.Adam(params, lr=self.lr if lr is None else lr, weight_decay=self.weight_decay, **extra)


mnp_training.TrainingConfig.adam = adam
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's lazy imports, outside the clock
data = Path(mnp_training.__file__).resolve().parents[3] / "shared" / "datasets" / "tabular" / f"{stem}.npz"
part = split_reference(data)
det = MNPDetector(**PRODUCT_MNP_PARAMS, random_state=42, device="cpu")
start = time.perf_counter()
det.fit(part.X_train, part.semi_y)
fit_s = time.perf_counter() - start
scores = det.score(part.X_test)
print(mode, stem, f"fit {fit_s:.1f} s", hashlib.sha1(scores.tobytes()).hexdigest()[:12])
