"""pyprof: an attach-free CPU profiler for HotSpot JVMs, watching from outside with eBPF."""

__version__ = "0.1.0"
