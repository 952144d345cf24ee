"""Verification of the generated RTL: cocotb + Verilator regression and SymbiYosys proofs.

``python -m sim`` / ``make -C hw sim`` runs the regression (docs/sim.md);
``python -m sim.formal`` / ``make -C hw formal`` the bounded formal checks.
Depends on the artifact + golden reference and hw/, never on the training stack.
"""
