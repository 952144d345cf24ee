// Self-test DUT for the simulation infrastructure (not part of the accelerator).
//
// A registered valid/ready pass-through with a two-entry skid buffer, so that
// input bubbles and output back-pressure both matter. Ports follow the names
// hw.generate uses: clk, rst (synchronous, active high), i_valid/i_ready/i_payload,
// o_valid/o_ready/o_payload. With FAULT=1 it corrupts bit 0 of beat number 5
// (to show that the scoreboard catches a wrong value).
module passthrough #(parameter WIDTH = 32, parameter FAULT = 0) (
    input  wire             clk,
    input  wire             rst,
    input  wire             i_valid,
    output wire             i_ready,
    input  wire [WIDTH-1:0] i_payload,
    output wire             o_valid,
    input  wire             o_ready,
    output wire [WIDTH-1:0] o_payload
);
    reg [WIDTH-1:0] data0, data1;   // data0 is the head
    reg [1:0]       count;
    reg [15:0]      seen;
    wire push = i_valid && i_ready;
    wire pop  = o_valid && o_ready;
    assign i_ready   = count < 2;
    assign o_valid   = count != 0;
    assign o_payload = data0;
    always @(posedge clk) begin
        if (rst) begin
            count <= 0;
            seen  <= 0;
        end else begin
            if (push) seen <= seen + 1;
            case ({push, pop})
                2'b10: begin
                    if (count == 0) data0 <= i_payload ^ ((FAULT != 0 && seen == 5) ? 1 : 0);
                    else            data1 <= i_payload ^ ((FAULT != 0 && seen == 5) ? 1 : 0);
                    count <= count + 1;
                end
                2'b01: begin
                    data0 <= data1;
                    count <= count - 1;
                end
                2'b11: begin
                    if (count == 1) data0 <= i_payload ^ ((FAULT != 0 && seen == 5) ? 1 : 0);
                    else begin data0 <= data1; data1 <= i_payload ^ ((FAULT != 0 && seen == 5) ? 1 : 0); end
                end
                default: ;
            endcase
        end
    end
endmodule
