"""Small QAT networks and calibration shared by the export and QONNX tests."""
import torch
import torch.nn as nn

from model import quant
from model.blocks import ConvBN, fold_batchnorm
from model.layers import LowRankConv2d, Tucker2Conv2d


class ProbeNet(nn.Module):
    """input -> dense 3x3 conv + ReLU (unsigned) -> one layer under test (signed or unsigned out)."""

    def __init__(self, qc, cin, mid, cout, kernel, stride, padding, ranks, out_signed):
        super().__init__()
        self.input_quant = quant.input_quant(qc)
        self.stem = ConvBN(quant.conv2d(qc, cin, mid, 3, 1, 1), mid, quant.relu(qc))
        if ranks is None:
            conv = quant.conv2d(qc, mid, cout, kernel, stride, padding)
        elif kernel == 1:
            conv = LowRankConv2d(mid, cout, ranks[0], stride, qc=qc)
        else:
            conv = Tucker2Conv2d(mid, cout, kernel, ranks, stride, padding, qc=qc)
        self.layer = ConvBN(conv, cout, quant.act(qc, signed=True) if out_signed else quant.relu(qc))

    def forward(self, x):
        return quant.value(self.layer(self.stem(self.input_quant(x))))

    def export(self, e):
        return e.conv("layer", self.layer, e.conv("stem", self.stem, e.input(self.input_quant)))


def calibrate_and_fold(model, in_shape, steps=4, seed=0):
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = model(torch.randn(8, *in_shape)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    fold_batchnorm(model)
    return model
