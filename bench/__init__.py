"""Latency and throughput profiling behind ``streamtmr bench``; results in bench/results/."""
