"""Verifiable tasks that meta-generators are measured on: the task, then its verifiers."""
from meta.tasks import arith, arith_verifiers

__all__ = ["arith", "arith_verifiers"]
