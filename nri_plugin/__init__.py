"""nri-memory-manager: kubelet Memory Manager static policy as an NRI plugin."""

__version__ = "0.1.0"
