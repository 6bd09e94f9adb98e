"""The same saga workloads as Temporal workflows, workers and dev-server management."""
