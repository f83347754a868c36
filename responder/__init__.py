"""drift-responder: Falco drift alerts in, incidents, evidence, approvals and actions out."""

__version__ = "0.1.0"
