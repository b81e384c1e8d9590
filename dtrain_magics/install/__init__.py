"""Installs and checks the native stack of an environment: MPI, CUDA toolkit, Horovod."""
