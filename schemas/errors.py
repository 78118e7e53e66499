"""The few exception types of protoguard, all under :class:`ProtoguardError`.

::

    ProtoguardError
    ├── ConfigError          a setting is missing or invalid; the message names the field
    ├── NotFittedError       a detector was used before ``fit``/``load``
    ├── ModelIntegrityError  a weights blob does not match its manifest (sha256, features)
    ├── RegistryError        an unknown or refused model version
    └── StackError           the local Kafka/Redis stack could not be started or stopped

A caller that wants to stop on any protoguard problem catches ``ProtoguardError``; the hot
path never lets one escape for bad *input* (bad input becomes a dead letter instead).
"""
from __future__ import annotations

__all__ = [
    "ConfigError",
    "ModelIntegrityError",
    "NotFittedError",
    "ProtoguardError",
    "RegistryError",
    "StackError",
]


class ProtoguardError(Exception):
    """Base class of every error protoguard raises on purpose."""


class ConfigError(ProtoguardError, ValueError):
    """A configuration value is invalid; the message names the field and how to set it."""


class NotFittedError(ProtoguardError, RuntimeError):
    """A detector was asked to score before it was fitted or loaded."""


class ModelIntegrityError(ProtoguardError):
    """Weights and manifest disagree (checksum, tensor names, feature names)."""


class RegistryError(ProtoguardError):
    """A model version is unknown, corrupt, or may not be promoted."""


class StackError(ProtoguardError):
    """The local Kafka + Redis stack failed to start, answer or stop."""
