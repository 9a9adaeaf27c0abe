"""Running bigger: the device and autocast dtype a run trains in (device.py), data parallelism under torchrun
(dist.py, wrapped around train.py's loop), the CE-only twin as a second process (twin.py), one process per run
(lock.py), and the benchmarks that measure speed and memory (bench.py: `python -m scale.bench --help`; the KD
loss's memory in loss_memory.py).
"""
