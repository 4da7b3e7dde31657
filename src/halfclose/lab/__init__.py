"""The lab: reproduce half-closed keep-alive waste in network namespaces on real kernel TCP."""
