"""nmbids: a BIDS App for neuromelanin-sensitive MRI."""

__version__ = "0.1.0"
