"""Test doubles that speak real wire protocols (drive them only through the official clients)."""

from tests.fakes.kubernetes_api import (
    ApiError,
    ExecCall,
    ExecResult,
    FakeKubernetes,
    LabelSelector,
    RecordedRequest,
    Workload,
)

__all__ = [
    "ApiError",
    "ExecCall",
    "ExecResult",
    "FakeKubernetes",
    "LabelSelector",
    "RecordedRequest",
    "Workload",
]
