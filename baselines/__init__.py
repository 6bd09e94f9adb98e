"""Baseline systems the runtime is measured against."""
