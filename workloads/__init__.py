"""Saga workloads: services, choreographies and consistency checkers, one folder each."""
