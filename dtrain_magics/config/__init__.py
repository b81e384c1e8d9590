"""Run settings: each one a traitlet, from which the flags, the form and the config file come."""
