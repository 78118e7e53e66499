"""HGAD after training: per-class thresholds from held-out normals and the spec-section-8 monitors.

Both are pure functions of log-likelihood arrays and latents, so they can be checked without a fit.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .hgad_losses import intra_centres, squared_distances
from .hgad_network import MixtureFlow

__all__ = ["DEAD_CENTRE_RESPONSIBILITY", "class_thresholds", "health_summary"]

#: An intra-class centre whose mean responsibility among its class's rows is below this is "dead"
#: (spec section 8.3); reported in ``training_summary_``.
DEAD_CENTRE_RESPONSIBILITY = 1e-3


def class_thresholds(
    ll_val: npt.NDArray[np.float64], y_val: npt.NDArray[np.int64], ll_train: npt.NDArray[np.float64],
    y_train: npt.NDArray[np.int64], classes: list[str], quantile: float,
) -> tuple[dict[str, float], float, list[str]]:
    """Per-class thresholds, the class-agnostic threshold, and the classes calibrated on training rows.

    ``ll_*`` are ell_y(x) for every row and class (n, Y). A class's threshold is the ``quantile`` of
    -ell_class over its held-out normals (spec section 7 "Calibration").

    resolution: a class without validation rows is calibrated on its training scores (biased low,
    so it alerts more; they are listed). The class-agnostic threshold is the same quantile of
    min_y -ell_y over all held-out rows (all training rows when there are none), for events of
    unknown classes (section 7, "Onboarding a new class", step 3).
    """
    thresholds: dict[str, float] = {}
    on_train: list[str] = []
    for c, name in enumerate(classes):
        scores = -ll_val[y_val == c, c]
        if len(scores) == 0:
            scores = -ll_train[y_train == c, c]
            on_train.append(name)
        thresholds[name] = float(np.quantile(scores, quantile))
    agnostic = -(ll_val if len(ll_val) else ll_train).max(axis=1)
    return thresholds, float(np.quantile(agnostic, quantile)), on_train


@torch.no_grad()
def health_summary(network: MixtureFlow, x_train: torch.Tensor, y_train: npt.NDArray[np.int64],
                   x_val: torch.Tensor | None, y_val: npt.NDArray[np.int64], classes: list[str]) -> dict[str, Any]:
    """Class accuracy of p(y|z) on validation rows, mixture entropies and dead intra centres (spec 8)."""
    network.eval()
    z = network.latents(x_train)
    y = torch.from_numpy(y_train).to(z.device)
    mus = intra_centres(network.centres, network.deltas)
    log_omega = torch.log_softmax(network.logits_omega, dim=1)
    resp = torch.softmax(log_omega[y] - 0.5 * (z.unsqueeze(1) - mus[y]).pow(2).sum(-1), dim=1)
    mean_resp = torch.stack([resp[y == c].mean(0) for c in range(len(classes))])
    pi = torch.softmax(network.logits_pi, dim=0)
    omega = log_omega.exp()
    pairwise = torch.pdist(network.centres) if len(classes) > 1 else torch.zeros(1)
    summary: dict[str, Any] = {
        "classes": list(classes),
        "class_counts": {name: int((y_train == c).sum()) for c, name in enumerate(classes)},
        "pi_entropy": round(float(-(pi * pi.log()).sum()), 4),
        "omega_entropy": [round(float(v), 4) for v in -(omega * log_omega).sum(1)],
        "n_dead_intra_centres": int((mean_resp < DEAD_CENTRE_RESPONSIBILITY).sum()),
        "min_centre_distance": round(float(pairwise.min()), 4),
    }
    if x_val is not None and len(y_val):
        predicted = squared_distances(network.latents(x_val), network.centres).argmin(1).cpu().numpy()
        summary["val_class_accuracy"] = round(float((predicted == y_val).mean()), 4)
    return summary
