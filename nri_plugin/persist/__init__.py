"""The state on disk: kubelet's checkpoint layout and checksum, the file, the writer, recovery."""
