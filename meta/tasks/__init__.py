"""Verifiable tasks that meta-generators are measured on."""
from meta.tasks import arith

__all__ = ["arith"]
