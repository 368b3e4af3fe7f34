"""Fault-injection runs against a real cluster (see run.py)."""
