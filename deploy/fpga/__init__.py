"""FPGA flows for layer engines: a UART host link (board top), open yosys/nextpnr
bitstreams through amaranth-boards platforms, Vivado build trees, resource / Fmax
reports and a generic-gate ASIC estimate. See docs/fpga.md.

Nothing here imports torch: like hw/ and sim/, it needs only the artifact.
"""
