"""Shared fixtures; the real-stack ones live in tests/fixtures/stack.py."""
from __future__ import annotations

import torch

pytest_plugins = ["tests.fixtures.stack", "tests.fixtures.pipeline"]

# Two cores are shared by the broker, Redis, pytest and torch: one torch thread keeps them apart.
torch.set_num_threads(1)
