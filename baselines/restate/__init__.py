"""The same saga workloads as Restate handlers, and the Restate server that drives them."""
