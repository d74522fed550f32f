"""Runtime profiling of the application's own process: what traces cannot say, which code burns
the CPU (cpu.py, flame graphs in flamegraph.py) and where memory goes."""
