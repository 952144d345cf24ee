"""FPGA deployment flows: yosys/nextpnr, Vivado build trees, the hls4ml HLS path, host tools."""
