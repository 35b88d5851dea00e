"""FLOP accounting: layer tables that equal ``FlopCounterMode`` (``tables``), the Iso-FLOP
bisection (``isoflop``) and the official Sparse-IFT budget beside ours (``budget``)."""
