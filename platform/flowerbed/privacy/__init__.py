"""Differential privacy: Opacus DP-SGD for causal LMs, the lifetime ledger, budget planning."""
