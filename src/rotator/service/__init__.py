"""The service layer: the use cases every interface calls."""

from rotator.service.credentials import PolicyInput, Principal, RotatorService, ValueInput

__all__ = ["PolicyInput", "Principal", "RotatorService", "ValueInput"]
