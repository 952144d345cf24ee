"""Low-rank layers are exactly the dense layer with their reconstructed weight (float)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.layers import LowRankConv2d, LowRankLinear, Tucker2Conv2d, hosvd
from model.quant import QuantConfig



torch.manual_seed(0)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1), (3, 3, 3)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_tucker2_equals_dense_conv_with_reconstructed_kernel(kernel, stride, padding, dilation):
    layer = Tucker2Conv2d(6, 10, kernel, (4, 5), stride, padding, dilation, bias=True).double()
    with torch.no_grad():
        layer.u2.bias.normal_()
    x = torch.randn(2, 6, 13, 11, dtype=torch.double)
    ref = F.conv2d(x, layer.reconstruct_kernel(), layer.u2.bias, stride, padding, dilation)
    assert layer.reconstruct_kernel().shape == (10, 6, kernel, kernel)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


def test_tucker2_rejects_bad_ranks():
    with pytest.raises(ValueError):
        Tucker2Conv2d(4, 8, 3, (5, 2))
    with pytest.raises(ValueError):
        Tucker2Conv2d(4, 8, 3, (0, 2))


@pytest.mark.parametrize("stride", [1, 2])
def test_lowrank_conv_equals_dense_1x1(stride):
    layer = LowRankConv2d(12, 7, 3, stride, bias=True).double()
    with torch.no_grad():
        layer.u2.bias.normal_()
    x = torch.randn(2, 12, 9, 9, dtype=torch.double)
    ref = F.conv2d(x, layer.reconstruct_kernel(), layer.u2.bias, stride)
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


def test_lowrank_linear_equals_dense():
    layer = LowRankLinear(20, 9, 4).double()
    with torch.no_grad():
        layer.u2.bias.normal_()
    x = torch.randn(3, 5, 20, dtype=torch.double)
    torch.testing.assert_close(layer(x), F.linear(x, layer.reconstruct_weight(), layer.u2.bias),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 2, 2)])
def test_from_conv_full_rank_decomposition_reproduces_conv(stride, padding, dilation):
    conv = nn.Conv2d(5, 8, 3, stride, padding, dilation, bias=True).double()
    layer = Tucker2Conv2d.from_conv(conv, (5, 8), decompose=True).double()  # factors stored in float32
    torch.testing.assert_close(layer.reconstruct_kernel(), conv.weight, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 5, 10, 10, dtype=torch.double)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_from_conv_truncated_is_hosvd_and_scratch_init_is_xavier():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    truncated = Tucker2Conv2d.from_conv(conv, (4, 4), decompose=True)
    u1, core, u2 = hosvd(conv.weight.detach(), 4, 4)
    torch.testing.assert_close(truncated.g.weight, core)
    # HOSVD factors are orthonormal
    torch.testing.assert_close(u1 @ u1.T, torch.eye(4), atol=1e-5, rtol=0)
    scratch = Tucker2Conv2d.from_conv(conv, (4, 4))            # from scratch: Xavier-uniform
    bound = (6 / (8 + 4)) ** 0.5
    assert scratch.u1.weight.abs().max() <= bound and not torch.equal(scratch.g.weight, core)


def test_from_linear_full_rank_reproduces_linear():
    lin = nn.Linear(6, 9).double()
    layer = LowRankLinear.from_linear(lin, 6, decompose=True).double()
    x = torch.randn(4, 6, dtype=torch.double)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)


def test_quant_tucker2_runs_and_backpropagates():
    layer = Tucker2Conv2d(4, 8, 3, (2, 3), padding=1, qc=QuantConfig())
    from model.quant import input_quant, value
    y = value(layer(input_quant(QuantConfig())(torch.randn(2, 4, 6, 6))))
    y.sum().backward()
    assert y.shape == (2, 8, 6, 6) and layer.u1.weight.grad is not None
