"""The embedded local stack: a real Kafka 4.x broker (Maven jars + java) and a real redis-server."""
from __future__ import annotations

from .stack import LocalStack, StackInfo

__all__ = ["LocalStack", "StackInfo"]
