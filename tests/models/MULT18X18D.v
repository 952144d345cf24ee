// Behavioural model of the Lattice ECP5 MULT18X18D multiplier, for simulating designs
// elaborated for ECP5 (hw/dsp.py) under Verilator. yosys ships only a black box for this
// cell (share/ecp5/cells_bb.v); this model follows Lattice's description of the cell
// (ECP5 sysDSP usage guide, TN1267):
//   * A and B pass through the input registers (REG_INPUTA_CLK / REG_INPUTB_CLK not
//     "NONE"), SIGNEDA / SIGNEDB with them; the 36-bit product of the two operands, each
//     sign-extended when its SIGNEDx is high and zero-extended otherwise, then passes
//     through the pipeline register (REG_PIPELINE_CLK) and the output register
//     (REG_OUTPUT_CLK) to P; a register set to "NONE" is bypassed.
//   * Registers: rising edge of CLK0, clock enable CE0, synchronous reset RST0 to 0
//     (RESETMODE "SYNC").
// Anything else (other clock / enable / reset selections, asynchronous reset, the shift
// and cascade inputs, the C input, MULT_BYPASS) is not modelled: the simulation stops
// at time 0 if an instance asks for it.
`default_nettype none
module MULT18X18D (
    input  wire A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15, A16, A17,
    input  wire B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, B13, B14, B15, B16, B17,
    input  wire C0, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13, C14, C15, C16, C17,
    input  wire SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input  wire CLK0, CLK1, CLK2, CLK3, CE0, CE1, CE2, CE3, RST0, RST1, RST2, RST3,
    output wire P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11, P12, P13, P14, P15, P16, P17,
    output wire P18, P19, P20, P21, P22, P23, P24, P25, P26, P27, P28, P29, P30, P31, P32, P33, P34, P35,
    output wire SIGNEDP
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_INPUTC_CLK = "NONE";
    parameter REG_INPUTC_CE = "CE0";
    parameter REG_INPUTC_RST = "RST0";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_PIPELINE_CE = "CE0";
    parameter REG_PIPELINE_RST = "RST0";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    parameter CLK0_DIV = "ENABLED";
    parameter CLK1_DIV = "ENABLED";
    parameter CLK2_DIV = "ENABLED";
    parameter CLK3_DIV = "ENABLED";
    parameter HIGHSPEED_CLK = "NONE";
    parameter GSR = "ENABLED";
    parameter CAS_MATCH_REG = "FALSE";
    parameter SOURCEB_MODE = "B_SHIFT";
    parameter MULT_BYPASS = "DISABLED";
    parameter RESETMODE = "SYNC";

    localparam IN_A = REG_INPUTA_CLK != "NONE", IN_B = REG_INPUTB_CLK != "NONE";
    localparam PIPE = REG_PIPELINE_CLK != "NONE", OUT = REG_OUTPUT_CLK != "NONE";

    initial begin
        if ((IN_A && REG_INPUTA_CLK != "CLK0") || (IN_B && REG_INPUTB_CLK != "CLK0") ||
            (PIPE && REG_PIPELINE_CLK != "CLK0") || (OUT && REG_OUTPUT_CLK != "CLK0") ||
            REG_INPUTA_CE != "CE0" || REG_INPUTB_CE != "CE0" || REG_PIPELINE_CE != "CE0" || REG_OUTPUT_CE != "CE0" ||
            REG_INPUTA_RST != "RST0" || REG_INPUTB_RST != "RST0" || REG_PIPELINE_RST != "RST0" ||
            REG_OUTPUT_RST != "RST0" || RESETMODE != "SYNC" || MULT_BYPASS != "DISABLED" ||
            HIGHSPEED_CLK != "NONE" || SOURCEB_MODE != "B_SHIFT")
            $fatal(1, "MULT18X18D model: configuration not modelled");
    end
    always @(posedge CLK0)
        if (SOURCEA || SOURCEB)
            $fatal(1, "MULT18X18D model: SOURCEA/SOURCEB (shift inputs) not modelled");

    wire [17:0] a = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};

    reg [17:0] a_r = 0, b_r = 0;
    reg sa_r = 0, sb_r = 0;
    always @(posedge CLK0) begin
        if (RST0) begin
            a_r <= 0; sa_r <= 0; b_r <= 0; sb_r <= 0;
        end else if (CE0) begin
            a_r <= a; sa_r <= SIGNEDA; b_r <= b; sb_r <= SIGNEDB;
        end
    end
    wire [17:0] a_m = IN_A ? a_r : a;
    wire [17:0] b_m = IN_B ? b_r : b;
    wire sa = IN_A ? sa_r : SIGNEDA;
    wire sb = IN_B ? sb_r : SIGNEDB;
    wire [35:0] a_x = {{18{sa & a_m[17]}}, a_m};
    wire [35:0] b_x = {{18{sb & b_m[17]}}, b_m};
    wire [35:0] prod = a_x * b_x;                      // low 36 bits of the extended operands' product

    reg [35:0] pipe_r = 0, out_r = 0;
    reg sp_pipe_r = 0;
    wire [35:0] pipe_q = PIPE ? pipe_r : prod;
    wire sp_pipe_q = PIPE ? sp_pipe_r : (sa | sb);
    always @(posedge CLK0) begin
        if (RST0) begin
            pipe_r <= 0; sp_pipe_r <= 0; out_r <= 0;
        end else if (CE0) begin
            pipe_r <= prod; sp_pipe_r <= sa | sb; out_r <= pipe_q;
        end
    end
    wire [35:0] p = OUT ? out_r : pipe_q;
    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18,
            P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p;
    assign SIGNEDP = sp_pipe_q;
endmodule
