"""The chain saga: a parcel stamped at each of N services in turn (the paper's chain benchmark)."""
