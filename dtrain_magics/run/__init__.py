"""One run of a cell: execute it on every rank, watch the ranks, stop them all on failure."""
