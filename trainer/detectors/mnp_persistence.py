"""How a fitted MNP's members become safetensors bytes and back, and which likelihood rule each has.

Kept apart from the estimator because this is the part with a compatibility promise: files written
by older versions (one network, no recorded rules) must still load, and anything that does not match
the manifest must fail loudly (``ModelIntegrityError``) rather than load half a model.
"""
from __future__ import annotations

from typing import Any

import torch

from ...schemas.errors import ModelIntegrityError
from ...schemas.manifest import ModelManifest
from .base import tensors_from_bytes, tensors_to_bytes
from .mnp_network import MNPNetwork
from .mnp_weighting import LikelihoodRule, normalise_weighting

__all__ = ["members_from_bytes", "members_to_bytes", "saved_rules"]


def _member_key(index: int, name: str) -> str:
    """Safetensors key of one member's tensor: member 0 keeps the plain name, so a one-member file
    keeps the single-network layout of files written before members existed."""
    return name if index == 0 else f"member{index}.{name}"


def members_to_bytes(members: list[MNPNetwork]) -> bytes:
    """Every member's state dict in one safetensors blob."""
    return tensors_to_bytes({_member_key(i, k): v for i, net in enumerate(members) for k, v in net.state_dict().items()})


def members_from_bytes(weights: bytes, manifest: ModelManifest, *, n_members: int, n_emb: int,
                       scorer_features: bool) -> list[MNPNetwork]:
    """The members a manifest describes, with their weights checked against it (checksum, names,
    shapes) before any is loaded."""
    n_features, k = len(manifest.feature_names), manifest.n_prototypes
    if k is None:
        raise ModelIntegrityError("manifest lacks n_prototypes")
    members = [MNPNetwork(n_features, n_emb, k, scorer_features=scorer_features) for _ in range(n_members)]
    expected = {_member_key(i, name) for i, net in enumerate(members) for name in net.state_dict()}
    tensors: dict[str, torch.Tensor] = tensors_from_bytes(weights, manifest, expected=expected)
    if set(tensors) != expected:
        raise ModelIntegrityError(f"weights hold unexpected tensors {sorted(set(tensors) - expected)[:5]}")
    if tensors["encoder.0.weight"].shape[1] != n_features:
        raise ModelIntegrityError(
            f"weights expect {tensors['encoder.0.weight'].shape[1]} features, manifest names {n_features}"
        )
    for i, net in enumerate(members):
        try:
            net.load_state_dict({name: tensors[_member_key(i, name)] for name in net.state_dict()}, strict=True)
        except RuntimeError as exc:
            raise ModelIntegrityError(f"weights do not fit the MNP architecture: {exc}") from exc
    return members


def saved_rules(summary: dict[str, Any], n_members: int, weighting: Any, beta: float) -> list[LikelihoodRule]:
    """Each member's likelihood rule from a manifest's training summary; manifests written before
    the rules were recorded get the rule their ``weighting`` parameter meant then (spec or none)."""
    saved = [m.get("likelihood_rule") for m in summary.get("members", [])] or [summary.get("likelihood_rule")]
    if len(saved) == n_members and all(isinstance(r, dict) for r in saved):
        return [LikelihoodRule.from_dict(r) for r in saved]
    kind = normalise_weighting(weighting)
    return [LikelihoodRule(kind="spec" if kind in ("adaptive", "rank") else kind, beta=beta)] * n_members
