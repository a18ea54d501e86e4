"""Graph configurations shipped with evpipe; `default.yaml` is what `evpipe run` runs."""
