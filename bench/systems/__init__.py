"""The systems under test, each deployable for any workload: accompanist_py and Temporal."""
