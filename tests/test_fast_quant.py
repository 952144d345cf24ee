"""The fused quantizers (model/fastquant.py) compute what Brevitas' computes, bit for bit.

Compared with ``torch.equal`` (values: a zero's sign may differ, which nothing downstream
reads): forward values, input gradients and scale gradients of single quantizers, and the
logits, every parameter's gradient and the weights of small networks over SGD steps in both
Brevitas phases (runtime statistics, then learned scales) and after the BatchNorm fold; a
short training run gives the same checkpoint with either implementation, and its export is
bit-exact. Ties are tested on purpose where they are the point (rounding at .5, equal
percentile elements), never relied on by accident.
"""
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
from brevitas.core.stats import AbsPercentile

from model import config, fastquant, quant
from model.blocks import fold_batchnorm
from model.build import build
from model.config import ConfigError
from model.quant import QuantConfig


def _scalings(model):
    return [m for m in model.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]


def learn_scales(model):
    """Leave Brevitas' statistics phase (as after its 300 steps): scales become parameters."""
    for m in _scalings(model):
        m.init_scale()


# ----------------------------------------------------------------------------- building blocks

@pytest.mark.parametrize("lo, hi", [(-128, 127), (-127, 127), (0, 255), (-8, 7), (0, 3), (-1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_window_is_the_clamp_range_under_round_half_to_even(lo, hi, dtype):
    a, b = fastquant.round_window(lo, hi, dtype)
    ends = torch.tensor([lo - 0.5, hi + 0.5, lo - 1.5, hi + 1.5, lo, hi], dtype=dtype)
    inf = torch.tensor(math.inf, dtype=dtype)
    u = torch.cat([ends, torch.nextafter(ends, inf), torch.nextafter(ends, -inf), torch.linspace(lo - 3, hi + 3, 997,
                                                                                               dtype=dtype)])
    inside = (torch.round(u) >= lo) & (torch.round(u) <= hi)
    assert torch.equal((u > a) & (u < b), inside)


def _brevitas_percentile(x, q=99.999):
    ref = AbsPercentile(q, None)
    x = x.detach().clone().requires_grad_(True)
    v = ref(x.reshape(-1))
    v.backward(torch.tensor(3.0))
    return v.detach(), x.grad


@pytest.mark.parametrize("shape", [(128, 16, 8, 8), (16, 8, 32, 32), (4, 3, 5, 7), (300, 7)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kind", ["continuous", "quantized"])
def test_percentile_value_and_gradient_equal_brevitas(shape, layout, kind):
    """Unique percentile elements (continuous values) take the block search; equal ones
    (quantized values, the usual input of a shortcut's requantizer) Brevitas' own kthvalue."""
    g = torch.Generator().manual_seed(len(shape) * 7 + shape[1])
    x = torch.randn(shape, generator=g) * 3
    if kind == "quantized":
        x = torch.round(x * 4).clamp(-20, 20) / 4
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    k = int(math.floor(.01 * 99.999 * x.numel() + 0.5))
    coords = fastquant._unique_kth_largest_abs(x, x.numel() - k + 1)
    ref_v, ref_g = _brevitas_percentile(x)
    if kind == "quantized":
        assert coords is None
    elif x.numel() > 4:
        assert coords is not None and x[coords].abs() == ref_v
    xx = x.detach().clone().requires_grad_(True)
    v = fastquant.FastAbsPercentile(99.999)(xx)
    v.backward(torch.tensor(3.0))
    assert torch.equal(v, ref_v) and torch.equal(xx.grad, ref_g) and xx.grad.stride() == ref_g.stride()


def test_fused_int_quant_refuses_what_it_does_not_implement():
    from brevitas.core.function_wrapper import FloorSte, Identity, TensorClamp
    with pytest.raises(ValueError, match="half to even"):
        fastquant.FusedIntQuant(False, True, Identity(), FloorSte(), TensorClamp())
    with pytest.raises(ValueError, match="delay"):
        fastquant.FusedIntQuant(False, True, Identity(), quant_delay_steps=3)


# ----------------------------------------------------------------------------- single quantizers

def _act(impl, signed, bits):
    qc = QuantConfig(impl=impl, act_bits=bits)
    return quant.act(qc, signed=True) if signed else quant.relu(qc)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [8, 3])
@pytest.mark.parametrize("phase", ["statistics", "transition", "learned"])
@pytest.mark.parametrize("x_layout, g_layout", [("nchw", "nchw"), ("channels_last", "channels_last"),
                                                ("channels_last", "nchw")])
def test_activation_quantizer_equals_brevitas(signed, bits, phase, x_layout, g_layout):
    fmt = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    gen = torch.Generator().manual_seed(bits + 2 * signed)
    x0 = (torch.randn(8, 6, 16, 16, generator=gen) * 2).contiguous(memory_format=fmt[x_layout])
    g0 = torch.randn(8, 6, 16, 16, generator=gen).contiguous(memory_format=fmt[g_layout])
    outs = []
    for impl in ("brevitas", "fused"):
        m = _act(impl, signed, bits).train()
        m(x0)
        if phase == "learned":
            learn_scales(m)
        if phase == "transition":                  # the step that turns statistics into the parameter
            _scalings(m)[0].counter = _scalings(m)[0].collect_stats_steps
        x = x0.clone().requires_grad_(True)
        out = m(x)
        scale = out.scale
        scale.retain_grad()
        out.value.backward(g0)
        value = _scalings(m)[0].value
        outs.append((out.value, x.grad, x.grad.stride(), scale.grad, value.grad))
        m.eval()
        with torch.no_grad():
            outs[-1] += (m(x0).value, m.act_quant.scale())
    for a, b in zip(*outs):
        assert a == b if isinstance(a, tuple) else torch.equal(a, b)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_weight_quantizer_equals_brevitas(bits, layout):
    outs = []
    for impl in ("brevitas", "fused"):
        torch.manual_seed(0)
        conv = quant.conv2d(QuantConfig(impl=impl, weight_bits=bits), 1 if bits == 2 else 5, 7, 3)
        if layout == "channels_last":
            conv = conv.to(memory_format=torch.channels_last)
        qw = conv.quant_weight()
        qw.value.backward(torch.randn(qw.value.shape, generator=torch.Generator().manual_seed(1)))
        outs.append((qw.value, qw.value.stride(), qw.scale, qw.int(), conv.weight.grad))
    for a, b in zip(*outs):
        assert a == b if isinstance(a, tuple) else torch.equal(a, b)


def test_the_package_quantizers_take_the_fused_scale_paths():
    """A Brevitas version whose modules differ would silently fall back to Brevitas' scaling."""
    qc = QuantConfig()
    kinds = [q.act_quant.fused_activation_quant_proxy.tensor_quant._kind for q in (quant.act(qc), quant.relu(qc))]
    assert kinds == ["activation", "activation"]
    assert quant.conv2d(qc, 3, 4, 3).weight_quant.tensor_quant._kind == "weight"
    assert quant.linear(qc, 3, 4).weight_quant.tensor_quant._kind == "weight"


def test_float64_eval_is_exact_like_brevitas():
    """model.verify runs the QAT model in float64; the fused path rounds there too."""
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64) * 5
    outs = []
    for impl in ("brevitas", "fused"):
        m = _act(impl, True, 8).train()
        m(x.float())
        learn_scales(m)
        m = m.double().eval()
        outs.append(m(x).value)
    assert torch.equal(*outs)


# ----------------------------------------------------------------------------- networks

def _steps(impl, shape, layout, dense, batch=8):
    """Logits and gradients of 2 statistics-phase steps, 1 learned-scale step and 1 step after
    the BatchNorm fold (biases quantized with the input scale: three terms in its gradient)."""
    torch.manual_seed(0)
    cfg = {"model": "resnet8", "quant_impl": impl, **({"dense": True} if dense else {"flops_reduction": 2.0})}
    m = build(cfg, shape, 10).model
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    m = m.to(memory_format=fmt)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    record = []
    for step in range(4):
        if step == 2:
            learn_scales(m)
        if step == 3:
            m.eval()
            fold_batchnorm(m)
            opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        x = torch.randn(batch, *shape, generator=gen).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,), generator=gen)
        m.train()
        opt.zero_grad()
        logits = m(x)
        nn.functional.cross_entropy(logits, y).backward()
        record.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
        opt.step()
    record.append((None, {n: p.detach().clone() for n, p in m.named_parameters()}))
    return record


@pytest.mark.parametrize("shape, layout, dense", [((1, 8, 8), "channels_last", False), ((3, 8, 8), "nchw", False),
                                                  ((1, 8, 8), "nchw", True), ((3, 8, 8), "channels_last", True)])
def test_sgd_steps_equal_brevitas_bit_for_bit(shape, layout, dense):
    ref, fused = _steps("brevitas", shape, layout, dense), _steps("fused", shape, layout, dense)
    for step, ((la, ga), (lb, gb)) in enumerate(zip(ref, fused)):
        assert la is None or torch.equal(la, lb), f"logits of step {step}"
        assert ga.keys() == gb.keys()
        differing = [n for n in ga if not torch.equal(ga[n], gb[n])]
        assert not differing, f"step {step}: {differing[:3]}"


def test_state_dicts_are_interchangeable():
    built = {impl: build({"model": "resnet8", "flops_reduction": 2.0, "quant_impl": impl}, (1, 8, 8), 10).model
             for impl in ("brevitas", "fused")}
    x = torch.randn(4, 1, 8, 8)
    built["brevitas"].train()(x)
    state = built["brevitas"].state_dict()
    built["fused"].load_state_dict(state)
    assert built["fused"].state_dict().keys() == state.keys()
    for m in built.values():
        m.eval()
    with torch.no_grad():
        assert torch.equal(built["brevitas"](x), built["fused"](x))


def test_training_runs_are_identical_and_the_fused_export_is_bit_exact(tmp_path):
    from model.train_qat import train
    from model.verify import verify_run
    runs = {}
    for impl in ("brevitas", "fused"):
        runs[impl] = train({"model": "resnet8", "data": "digits", "train_subset": 64, "test_subset": 32,
                            "batch_size": 32, "epochs": 2, "out_dir": str(tmp_path), "run_name": impl,
                            "threads": 1, "quant_impl": impl, "export": impl == "fused"})
    ck = {impl: torch.load(Path(r["run_dir"]) / "checkpoint.pt", weights_only=True) for impl, r in runs.items()}
    a, b = ck["brevitas"], ck["fused"]
    assert a["bn_folded"] and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for name, s in a["quant_state"].items():
        t = b["quant_state"][name]
        assert s["counter"] == t["counter"] and torch.equal(s["value"], t["value"]) and torch.equal(s["buffer"],
                                                                                                    t["buffer"])
    report = verify_run(runs["fused"]["run_dir"])
    assert report["mismatching_elements"] == 0 and report["classes_identical"] and report["elements_compared"] > 0


def test_channels_last_training_resumes_bit_for_bit(tmp_path):
    """``channels_last: true`` (NHWC images and conv weights) trains, and a run interrupted
    before the fold and resumed reaches the uninterrupted run's weights."""
    from model.train_qat import main, train
    cfg = {"model": "resnet8", "data": "digits", "train_subset": 64, "test_subset": 32, "batch_size": 32,
           "epochs": 3, "fold_bn_at": 0.5, "export": False, "out_dir": str(tmp_path), "threads": 1,
           "channels_last": True}
    ref = train({**cfg, "run_name": "ref"})
    cut = train({**cfg, "run_name": "cut", "stop_after": 1})
    assert cut["stopped"] and main(["--resume", cut["run_dir"]]) == 0
    a, b = (torch.load(Path(r["run_dir"]) / "checkpoint.pt", weights_only=True) for r in (ref, cut))
    assert a["epoch"] == b["epoch"] == 3 and a["bn_folded"] and a["config"]["channels_last"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ----------------------------------------------------------------------------- configuration and bench

def test_quant_impl_option():
    assert config.resolve({})["quant_impl"] == "fused" == QuantConfig().impl
    assert config.resolve({"quant_impl": "brevitas"})["quant_impl"] == "brevitas"
    with pytest.raises(ConfigError, match="unknown quant impl 'fast'; choose one of: fused, brevitas"):
        config.from_argv(["--quant-impl", "fast"])
    with pytest.raises(ConfigError, match="quant_impl must be a string"):
        config.resolve({"quant_impl": 1})
    with pytest.raises(ValueError, match="quant-impl must be one of"):
        QuantConfig(impl="fast")
    cfg = config.resolve({"quant_impl": "brevitas", "model": "resnet8"})
    model = build(cfg, (1, 8, 8), 10).model
    assert not any(isinstance(m, fastquant.FusedIntQuant) for m in model.modules())
    fused = build({"model": "resnet8", "flops_reduction": 2.0}, (1, 8, 8), 10).model
    assert any(isinstance(m, fastquant.FusedIntQuant) for m in fused.modules())


def test_train_script_bad_quant_impl_exits_2_with_one_line(tmp_path, capsys):
    from model.train_qat import main
    assert main(["--quant-impl", "fast", "--out-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown quant impl 'fast'")
    assert not (tmp_path / "runs").exists()


def _train_speed():
    bench = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, bench)
    try:
        import train_speed
        return train_speed
    finally:
        sys.path.remove(bench)


def test_bench_times_both_paths_side_by_side(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rows = _train_speed().main(["--sizes", "8", "--batch", "4", "--repeats", "1", "--warmup", "0", "--threads", "1",
                                "--rank-multiple", "8", "--json", str(out)])
    text = capsys.readouterr().out
    assert "logical CPUs" in text and "threads [1]" in text
    modes = {(r["model"], r["mode"]) for r in rows}
    assert modes == {(n, m) for n in ("dense", "low-rank") for m in ("float", "qat-brevitas", "qat-fused")}
    fused = [r for r in rows if r["mode"] == "qat-fused"]
    assert all(r["train_over_float"] > 0 and r["train_speedup_over_brevitas"] > 0 for r in fused)
    assert [r["flops_ratio_train"] < 0.6 for r in rows if r["model"] == "low-rank"] == [True] * 3
    saved = json.loads(out.read_text())
    assert saved["hardware"]["device"] == "cpu" and len(saved["results"]) == 6


def test_bench_refuses_cuda_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        _train_speed().main(["--device", "cuda"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python bench/train_speed.py: error: --device cuda: no CUDA device is available; use --device cpu"]
