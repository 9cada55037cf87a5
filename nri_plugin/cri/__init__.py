"""The CRI side of the proxy: our runtime.v1 message subset and conversions to NRI."""
