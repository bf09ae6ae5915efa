"""dmt: Disaggregated Multi-Tower training of large recommendation models on torch.distributed."""

__version__ = "0.1.0"
