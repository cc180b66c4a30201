"""SecAgg+ (Bell et al. 2020) as both sides of a round speak it: the Message contract, the
masks and the quantization. The ServerApp's side is `server/secure_aggregation.py`, the
ClientApp's mod `client/secure.py`; each imports this package, never the other.
"""
