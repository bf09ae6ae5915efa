"""Bridges to other recommendation libraries. Each submodule imports its library lazily, so `dmt`
itself never needs them: `dmt.interop.torchrec` needs the `torchrec` extra."""
