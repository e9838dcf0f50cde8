"""Latency and throughput profiling behind ``streamtmr bench``; results in bench/results/.

Modules: :mod:`bench.suite` (the whole run), :mod:`bench.engines` (engine micro-benchmark),
:mod:`bench.node` (end-to-end node over ZeroMQ loopback), :mod:`bench.offline` (offline
throughput), :mod:`bench.machine` (machine description), :mod:`bench.report` (tables, plot,
saved results). This module stays import-light: the CLI reads its defaults when it starts.
"""

#: The comparison ``streamtmr bench`` runs when no ``--models`` are given.
DEFAULT_MODELS = ("default", "tmr-paper", "pmr-small", "moon-resnet-small")
#: The benchmarks one run can include (``--parts``): engine calls on windows, streaming
#: ``step`` calls per frame, the node end to end, offline throughput.
PARTS = ("engine", "step", "node", "offline")
