"""dtrain-magics benchmarks against its peers, through real Jupyter kernels.

``make bench`` (or ``python -m benchmarks``) runs every suite and writes
``benchmarks/results/``; ``python -m benchmarks.readme`` pastes the latest table into the
README. Modules: ``run`` (options, order), ``context`` (kernels, ``mpiexec``, scratch space),
``kernels`` (one real kernel with a widget front end), ``workloads`` (the code the ranks run),
``suites/`` (one module per suite), ``stats``, ``machine`` and ``report``.
"""
