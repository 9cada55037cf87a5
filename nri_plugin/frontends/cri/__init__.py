"""The CRI proxy front end: our runtime.v1 message subset, conversions, the proxy."""
