"""What runs leave on disk: run records, each kernel's cluster state, and the diagnostics log."""
