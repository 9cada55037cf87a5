"""What users hand us, read one way: config, kubelet config, topology, scenarios."""
