"""The ways in: the NRI plugin's handler, the CRI proxy and ``simulate``."""
