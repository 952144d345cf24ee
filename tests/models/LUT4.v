// Behavioural model of the Lattice ECP5 LUT4 (yosys share/ecp5/cells_sim.v has the same
// function): Z is bit {D, C, B, A} of INIT. hw/dsp.py instantiates it as a constant
// (INIT 16'h0000 or 16'hFFFF) next to each MULT18X18D.
`default_nettype none
module LUT4 (input wire A, B, C, D, output wire Z);
    parameter [15:0] INIT = 16'h0000;
    assign Z = INIT[{D, C, B, A}];
endmodule
`default_nettype wire
