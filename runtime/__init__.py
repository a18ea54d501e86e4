"""evpipe runtime: node contract, wire format, graphs, launcher, tracing, inference engines."""
