"""The benchmark harness: deploy, inject latency and crashes, load, analyse, plot, report."""
