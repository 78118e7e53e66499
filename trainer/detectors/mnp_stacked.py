"""StackedMNP: the forward pass of every MNP member as one batched pass, for inference only.

``MNPDetector`` with ``n_members`` > 1 averages independent networks. Running them one after the
other costs one set of kernel launches and host round trips per member and per chunk, which on a
GPU is most of the time at scorer batch sizes (tens of thousands of rows, a 193 -> 101 -> 8
autoencoder). Here the members' weights are stacked once, when the detector is fitted or loaded,
and a batch goes through all members in one forward:

- the first encoder layer reads the same ``x`` in every member, so its M weight matrices are
  concatenated along the output dimension and the layer is one ``(n, D) x (D, M*h1)`` GEMM;
- every later layer is one ``torch.baddbmm`` over ``(M, n, in)`` activations and ``(M, out, in)``
  weights (bias added by the same kernel).

Why explicit stacked tensors and not ``torch.func.stack_module_state`` + ``vmap``: vmap would batch
the first layer as M slices of a broadcast ``x`` instead of one wide GEMM, re-runs its Python
batching rules on every call (the per-call overhead this module exists to remove), and ties the
hot path to ``torch.func`` internals; ``einsum`` dispatches to the same ``bmm`` with extra
permutes. Explicit ``addmm``/``baddbmm`` are plain kernels on CPU and CUDA alike, built once.

The maths is the one of :class:`~.mnp_network.MNPNetwork.forward` (same operations, same order per
member), so scores agree with the per-member networks to float32 rounding (~1e-7, tested to 1e-5).
The module is a snapshot: it copies the members' weights, so members changed after it was built
(e.g. by further training) need a new one. Training never uses it.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .mnp_network import LEAKY_SLOPE, MNPNetwork, per_feature_reconstruction

__all__ = ["PinnedStaging", "StackedForward", "StackedMNP"]


class StackedForward(NamedTuple):
    """What the scorer and the explanations need, per member: every tensor has M first."""

    z_hat: torch.Tensor  # (M, n, H) L2-normalised embeddings
    per_feature: torch.Tensor  # (M, n, D) Smooth-L1 reconstruction error per feature
    rec: torch.Tensor  # (M, n) r(x), the mean of per_feature over features
    sim: torch.Tensor  # (M, n, K) Student-t similarity to each normalised prototype
    s_max: torch.Tensor  # (M, n)
    score: torch.Tensor  # (M, n) phi(x) in (0, 1)


def _leaky(t: torch.Tensor) -> torch.Tensor:
    # In place: every activation here is a fresh temporary of this forward.
    return nn.functional.leaky_relu_(t, LEAKY_SLOPE)


class StackedMNP(nn.Module):
    """M fitted :class:`MNPNetwork` members (one architecture) as one inference module.

    Parameters
    ----------
    members : the fitted networks, all with the same D, H and K, all on one device.
    offset, scale : the detector's MinMax scaler, applied by :meth:`prepare` on the device so that
        raw rows travel to a GPU once and are scaled there.

    Every tensor is a buffer (no parameters, no autograd); ``.to(device)`` moves them all.
    """

    def __init__(self, members: Sequence[MNPNetwork], offset: npt.NDArray[np.float32],
                 scale: npt.NDArray[np.float32]) -> None:
        super().__init__()
        if not members:
            raise ValueError("StackedMNP needs at least one member network.")
        device = members[0].prototypes.device

        def stack(pick: str) -> torch.Tensor:
            return torch.stack([m.get_parameter(pick).detach() for m in members])

        self.n_members = len(members)
        enc1_w = stack("encoder.0.weight")  # (M, h1, D)
        self.n_features, self.hidden = enc1_w.shape[2], enc1_w.shape[1]
        # The first layer as one wide Linear: rows [m*h1, (m+1)*h1) of the weight are member m's.
        self.register_buffer("enc1_w", enc1_w.reshape(-1, self.n_features))  # (M*h1, D)
        self.register_buffer("enc1_b", stack("encoder.0.bias").reshape(-1))  # (M*h1,)
        for name, pick in (("enc2", "encoder.2"), ("dec1", "decoder.0"), ("dec2", "decoder.2"),
                           ("sc1", "scorer.net.0"), ("sc2", "scorer.net.2")):
            self.register_buffer(f"{name}_w", stack(f"{pick}.weight"))  # (M, out, in)
            self.register_buffer(f"{name}_b", stack(f"{pick}.bias").unsqueeze(1))  # (M, 1, out)
        with torch.no_grad():
            # The prototypes are fixed at inference: normalise them (and their squared norms) once.
            c_hat = nn.functional.normalize(stack("prototypes"), dim=2)  # (M, K, H)
        self.register_buffer("c_hat", c_hat)
        # phi reads [z_hat ; r ; s_max], plus the scaled features when the members were built so.
        self.scorer_features = self.sc1_w.shape[2] > c_hat.shape[2] + 2
        self.register_buffer("c_sq", c_hat.pow(2).sum(2).unsqueeze(1))  # (M, 1, K)
        self.register_buffer("offset", torch.as_tensor(np.asarray(offset, np.float32), device=device))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, np.float32), device=device))

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """MinMax-scaled rows: ``(raw - offset) / scale``, the same float32 ops as the detector's numpy."""
        return (raw - self.offset) / self.scale

    def forward(self, x: torch.Tensor) -> StackedForward:
        """All members' forward pass over scaled rows ``x`` (n, D) in one go."""
        n, m = x.shape[0], self.n_members
        h = _leaky(torch.addmm(self.enc1_b, x, self.enc1_w.T))  # (n, M*h1): one GEMM for all members
        h = h.view(n, m, self.hidden).transpose(0, 1)  # (M, n, h1), a strided view (BLAS-compatible)
        z = _leaky(torch.baddbmm(self.enc2_b, h, self.enc2_w.mT))  # (M, n, H)
        g = _leaky(torch.baddbmm(self.dec1_b, z, self.dec1_w.mT))  # (M, n, h1)
        x_hat = _leaky(torch.baddbmm(self.dec2_b, g, self.dec2_w.mT))  # (M, n, D)
        # expand, not broadcast: smooth_l1_loss warns on (and may one day refuse) mismatched shapes.
        per_feature = per_feature_reconstruction(x.expand_as(x_hat), x_hat)
        rec = per_feature.mean(2)
        z_hat = nn.functional.normalize(z, dim=2)
        # student_t_similarity (alpha = 1) per member, with the same operation order.
        d2 = (z_hat.pow(2).sum(2, keepdim=True) + self.c_sq - 2.0 * torch.bmm(z_hat, self.c_hat.mT)).clamp_min(0.0)
        sim = 1.0 / (1.0 + d2)
        s_max = sim.amax(2)
        parts = [z_hat, rec.unsqueeze(2), s_max.unsqueeze(2)]
        if self.scorer_features:
            parts.append(x.expand(m, n, self.n_features))
        u = torch.cat(parts, dim=2)  # (M, n, H + 2 [+ D])
        hidden = _leaky(torch.baddbmm(self.sc1_b, u, self.sc1_w.mT))
        score = torch.sigmoid(torch.baddbmm(self.sc2_b, hidden, self.sc2_w.mT)).squeeze(2)
        return StackedForward(z_hat=z_hat, per_feature=per_feature, rec=rec, sim=sim, s_max=s_max, score=score)


class PinnedStaging:
    """Reusable page-locked host buffers for the host-to-device rows and device-to-host scores.

    Why: a copy from pageable (ordinary numpy) memory makes the CUDA driver stage it through its
    own pinned bounce buffer, synchronously and at a fraction of the bus bandwidth; pinning a
    fresh buffer per call costs more than the copy. So the rows are copied once into a buffer that
    stays pinned and grows to the largest chunk seen, and go to the GPU with one asynchronous copy.

    Only for CUDA devices (the detector creates one only there). Not thread-safe by itself: hold
    :attr:`lock` for a whole upload-compute-download sequence.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.lock = threading.Lock()
        self._rows: torch.Tensor | None = None
        self._rows_free: torch.cuda.Event | None = None
        self._values: torch.Tensor | None = None

    @staticmethod
    def _grown(buffer: torch.Tensor | None, n_elements: int) -> torch.Tensor:
        if buffer is not None and buffer.numel() >= n_elements:
            return buffer
        # Doubling keeps re-pinning rare when batch sizes creep up.
        size = max(n_elements, 0 if buffer is None else 2 * buffer.numel())
        return torch.empty(size, dtype=torch.float32, pin_memory=True)

    def upload(self, rows: npt.NDArray[np.float32]) -> torch.Tensor:
        """``rows`` (n, D) float32 as a tensor on the device; the copy is asynchronous."""
        n_elements = rows.size
        if self._rows_free is not None:
            # The previous upload read from this buffer; it must be done before we overwrite it.
            self._rows_free.synchronize()
        self._rows = self._grown(self._rows, n_elements)
        host = self._rows[:n_elements].view(rows.shape)
        host.copy_(torch.from_numpy(rows))
        on_device = host.to(self.device, non_blocking=True)
        self._rows_free = torch.cuda.Event()
        self._rows_free.record(torch.cuda.current_stream(self.device))
        return on_device

    def download(self, values: torch.Tensor) -> npt.NDArray[np.float32]:
        """A float32 device vector as a fresh numpy array (waits for the device to get there)."""
        n_elements = values.numel()
        self._values = self._grown(self._values, n_elements)
        host = self._values[:n_elements]
        host.copy_(values.reshape(-1), non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        done.synchronize()
        return host.numpy().copy()  # a copy: the buffer is reused by the next call
