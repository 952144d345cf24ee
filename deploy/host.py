"""Host-side tool: send images to a board's serial port, print what comes back.

::

    python -m deploy.host --port PORT [--baud 115200] info
    python -m deploy.host --port PORT infer --npy FILE.npy [--labels L.npy] [--artifact DIR [--layer NAME] --check]
        [--out Y.npy]
    python -m deploy.host --port PORT infer --digits N --artifact DIR [--layer NAME] [--check]
    python -m deploy.host serve --artifact DIR [--layer NAME] [--tcp PORT]     # a board model on a pty/socket

``PORT`` is anything pyserial opens: ``/dev/ttyUSB0``, a pty path, ``loop://``,
``socket://HOST:PORT``. The board describes what it runs (``info``: the whole network or
one layer, input and output shapes, bit widths, multipliers, cycles per frame, clock,
baud), so ``infer`` needs no artifact unless it has to quantise images (``--digits``:
scikit-learn's first N 8x8 digits, scaled to [-1, 1] as in training and quantised with
:func:`artifact.golden.quantize_input` and the artifact's input record; they are not the
held-out test images, which a run folder's ``test_inputs.npy`` holds) or check the answers
against the golden model (``--check``). Without ``--layer`` the board must run the whole
network; ``--layer NAME`` talks to a board running that one layer.

Every answer carries the board's class (argmax of the output values, for a vector output)
and its cycle count from the first input beat to the last output beat (the latency, for
a network). With labels (``--digits``, ``--labels``, or a ``test_labels.npy`` beside a
``--npy .../test_inputs.npy``) the accuracy of the board's classes is printed.

Input ``.npy``: integer tensors ``(N, C, H, W)`` or one ``(C, H, W)`` frame, already in
the input's integer range (checked with :func:`artifact.io.check_input_array` against
the artifact's network or layer input before the port is opened, and against the
board's once it has answered ``info``). ``--out Y.npy`` is written at exactly that path
(it must end in ``.npy``), atomically. With ``--json FILE`` a machine-readable record of
the run is written. Exit status: 0 all frames answered (and matched, with ``--check``),
1 a mismatch or a failed request, 2 bad input (one line on stderr, nothing sent or
written: every option, path and input array is checked first).
"""
from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from artifact.cli import Parser, UsageError, check_out_file, fail, float_range, int_range, load_npy
from artifact.files import atomic_save_npy, atomic_write_text
from deploy.fpga import protocol as P

__all__ = ["main", "open_port", "digits_images", "load_frames"]

PROG = "python -m deploy.host"
#: scikit-learn's digits data set has this many images.
DIGITS = 1797
MIN_BAUD, MAX_BAUD = 50, 20_000_000


def open_port(url: str, baud: int, timeout: float = 0.05):
    """A pyserial port for ``url`` (device path, pty, loop://, socket://...)."""
    try:
        import serial
    except ImportError:
        raise UsageError("pyserial is not installed: `pip install pyserial`") from None
    return serial.serial_for_url(url, baudrate=baud, timeout=timeout)


def digits_images(artifact, n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` scikit-learn digits (from ``offset``) quantised for the artifact's input:
    (integer images (N, 1, 8, 8), labels)."""
    from sklearn.datasets import load_digits

    from artifact.golden import quantize_input
    d = load_digits()
    x = d.data[offset:offset + n].reshape(-1, 1, 8, 8) / 16.0 * 2.0 - 1.0      # as model.data does
    return quantize_input(x, artifact.manifest["input"]), d.target[offset:offset + n]


def _layer_for(art, name):
    """The board's layer: ``name`` (an op the hardware generator builds), or None (the whole network)."""
    if name is None:
        return None
    if not name.strip():
        raise UsageError("--layer is empty; give a layer name of the manifest (or none: the whole network)")
    from hw.spec import SUPPORTED_OPS
    op = art.layer(name)["op"]
    if op not in SUPPORTED_OPS:
        raise UsageError(f"layer {name!r} has op {op!r}, which no board runs (board layers: "
                         f"{', '.join(SUPPORTED_OPS)})")
    return name


def _cmd_info(link, args, out) -> int:
    info = link.board_info()
    rec = info.as_dict()
    what = f"network of {info.layers} layers" if info.op == "network" else f"{info.op} layer"
    print(f"board: {what}, input {list(info.in_shape)} x {info.in_bits}-bit "
          f"{'signed' if info.in_signed else 'unsigned'} -> output {list(info.out_shape)} x {info.out_bits}-bit "
          f"{'signed' if info.out_signed else 'unsigned'}")
    print(f"       {info.multipliers} multipliers, {info.cycles_per_frame} cycles/frame, clock "
          f"{info.clk_hz / 1e6:g} MHz, {info.baud} baud, idle timeout {info.timeout_s * 1e3:g} ms")
    out["info"] = rec
    return 0


def load_frames(path, what: str = "--npy") -> np.ndarray:
    """An integer ``.npy`` of frames, loaded without pickles; UsageError (one line) when it
    is missing, damaged (truncated, an object array) or not integers."""
    x = load_npy(path, what)
    if x.dtype == object or not np.issubdtype(x.dtype, np.integer):
        raise UsageError(f"{what} {path}: expected integer tensors, got {x.dtype} (quantise them first, "
                         f"artifact.golden.quantize_input)")
    return x


def _batched(x: np.ndarray, shape) -> np.ndarray:
    """One ``(C, H, W)`` frame becomes a batch of one."""
    return x[None] if x.ndim == len(shape) else x


def _prepare_infer(args) -> dict:
    """Everything ``infer`` needs that does not need the board: artifact, layer (None: the
    whole network), frames (checked against its input), labels. UsageError / ArtifactError."""
    from artifact import load_artifact
    from artifact.io import check_input_array
    from deploy.fpga.board_model import input_record
    if (args.check or args.digits) and not args.artifact:
        raise UsageError(f"{'--check' if args.check else '--digits'} needs --artifact DIR"
                         + (" (for the golden model)" if args.check else " (for the input quantiser)"))
    if args.layer is not None and not args.artifact:
        raise UsageError("--layer needs --artifact DIR")
    art = load_artifact(args.artifact) if args.artifact else None
    layer = _layer_for(art, args.layer) if art is not None else None
    labels = None
    if args.digits:
        if args.offset + args.digits > DIGITS:
            raise UsageError(f"--offset {args.offset} + --digits {args.digits} is past the {DIGITS} digits images")
        if layer is not None and "input" not in art.layer(layer)["inputs"]:
            raise UsageError(f"--digits images are the network input, but layer {layer!r} takes "
                             f"{art.layer(layer)['inputs']}")
        if list(art.manifest["input"]["shape"]) != [1, 8, 8]:
            raise UsageError(f"--digits images are 1x8x8, the artifact's input is {art.manifest['input']['shape']}")
        if args.labels is not None:
            raise UsageError("--labels applies to --npy frames; --digits images bring their own labels")
        x, labels = digits_images(art, args.digits, args.offset)
    else:
        if args.offset:
            raise UsageError("--offset applies to --digits")
        x = load_frames(args.npy)
        if art is not None:
            spec = input_record(art, layer)
            x = check_input_array({"input": spec}, _batched(x, spec["shape"]),
                                  f"--npy {args.npy} ({'the network' if layer is None else f'layer {layer}'})")
        labels = _labels_for(args, len(x) if x.ndim == 4 else 1)
    return {"art": art, "layer": layer, "x": x.astype(np.int64), "labels": labels}


def _labels_for(args, n: int):
    """Labels of the ``--npy`` frames: ``--labels``, else a ``test_labels.npy`` beside a
    ``test_inputs.npy``, else None. UsageError (one line) for a file that does not fit."""
    from pathlib import Path
    path = args.labels
    if path is None:
        sibling = Path(args.npy).with_name("test_labels.npy")
        if Path(args.npy).name != "test_inputs.npy" or not sibling.is_file():
            return None
        path = str(sibling)
    y = load_frames(path, "--labels")
    if y.ndim != 1 or len(y) != n:
        raise UsageError(f"--labels {path}: expected {n} integer labels (one per frame), got shape {list(y.shape)}")
    return y


def _cmd_infer(link, args, out, prep: dict) -> int:
    from artifact.io import check_input_array
    art, layer, x, labels = prep["art"], prep["layer"], prep["x"], prep["labels"]
    info = link.board_info()
    if art is not None and (layer is None) != (info.op == "network"):
        raise UsageError(f"the board runs {'the whole network' if info.op == 'network' else f'a {info.op} layer'}"
                         + ("; leave out --layer" if layer is not None else "; give --layer NAME for it"))
    board_in = {"shape": list(info.in_shape), "bits": info.in_bits, "signed": info.in_signed}
    x = _batched(x, info.in_shape)
    if art is not None and x.ndim >= 2 and int(np.prod(x.shape[1:])) == int(np.prod(info.in_shape)):
        x = x.reshape(len(x), *info.in_shape)       # a (N, C) linear-layer input: the board says (C, 1, 1)
    x = check_input_array({"input": board_in}, x,
                          f"input frames (the board's layer takes {tuple(info.in_shape)} x {info.in_bits}-bit "
                          f"{'signed' if info.in_signed else 'unsigned'})")
    golden = None
    if args.check:
        from deploy.fpga.board_model import golden_outputs
        golden = golden_outputs(art, layer, x)
        if int(np.prod(golden.shape[1:])) != int(np.prod(info.out_shape)):
            raise UsageError(f"{'the network' if layer is None else f'layer {layer!r}'} of the artifact gives "
                             f"{list(golden.shape[1:])}, the board {list(info.out_shape)}: is the board running it?")
        golden = golden.reshape(len(x), *info.out_shape)
    ys, results, bad, hits, golden_hits = [], [], 0, 0, 0
    batch = min(args.batch or info.batch, info.batch)
    t0 = time.monotonic()
    answers, seconds = [], []
    for start in range(0, len(x), batch):
        t = time.monotonic()
        answers += link.infer_batch(x[start:start + batch])
        n = len(x[start:start + batch])
        seconds += [(time.monotonic() - t) / n] * n
    for i, (answer, dt) in enumerate(zip(answers, seconds)):
        y = answer.values
        ys.append(y)
        r = {"index": i, "seconds": round(dt, 4), "out_shape": list(y.shape), "cycles": answer.cycles}
        line = f"frame {i}: output {list(y.shape)}"
        flat = y.reshape(-1)
        if y.size <= 16 or answer.label is not None:
            line += f" = {flat.tolist()}"
        else:
            line += f" min {int(flat.min())} max {int(flat.max())} sum {int(flat.sum())} first {flat[:6].tolist()}"
        if answer.label is not None:
            r["class"] = answer.label
            line += f" -> class {answer.label}"
        if labels is not None:
            r["label"] = int(labels[i])
            line += f" (label {int(labels[i])})"
            hits += answer.label == int(labels[i])
        if golden is not None:
            diff = int(np.count_nonzero(y != golden[i]))
            want = P.answer_class(golden[i], info)
            r["mismatches"] = diff
            r["class_matches"] = answer.label == (None if want == P.NO_CLASS else want)
            bad += diff > 0 or not r["class_matches"]
            line += " | golden: " + ("match" if diff == 0 else f"{diff} of {y.size} differ")
            if not r["class_matches"]:
                line += f", class {want} expected"
            if labels is not None:
                golden_hits += want == int(labels[i])
        line += f" [{answer.cycles} cycles, {dt * 1e3:.1f} ms]"
        print(line)
        results.append(r)
    total = time.monotonic() - t0
    print(f"{len(x)} frame(s) in {total:.2f} s ({len(x) / max(total, 1e-9):.1f} frames/s over the link, "
          f"{batch} per request)"
          + (f", {link.retried} retried request(s)" if link.retried else "")
          + ("" if golden is None else f"; {len(x) - bad}/{len(x)} bit-exact against the golden model"))
    cycles = [r["cycles"] for r in results]
    if cycles and max(cycles) > 0:
        print(f"board cycles from first input beat to last output beat: min {min(cycles)}, max {max(cycles)} "
              f"({max(cycles) / max(info.clk_hz, 1) * 1e6:.1f} us at {info.clk_hz / 1e6:g} MHz)")
    accuracy = None
    if labels is not None and info.scores and len(x):
        accuracy = hits / len(x)
        print(f"accuracy of the board's classes: {100 * accuracy:.2f}% ({hits}/{len(x)})"
              + ("" if golden is None else f"; golden model: {100 * golden_hits / len(x):.2f}%"))
    if args.out:
        atomic_save_npy(args.out, np.stack(ys))
    out.update(frames=results, seconds=round(total, 3), retried=link.retried,
               bit_exact=None if golden is None else bad == 0, accuracy=accuracy)
    return 1 if bad else 0


def _cmd_serve(args) -> int:
    from artifact import load_artifact
    from deploy.fpga.board_model import BoardModel, model_info, serve
    art = load_artifact(args.artifact)
    layer = _layer_for(art, args.layer)
    model = BoardModel(art, layer, model_info(art, layer, baud=args.baud, timeout_s=args.board_timeout))
    stop = threading.Event()

    def ready(addr):
        what = "the whole network" if layer is None else f"layer {layer!r}"
        print(f"board model of {what} on {addr} (Ctrl-C to stop)", flush=True)
    try:
        serve(model, "tcp" if args.tcp is not None else "pty", args.tcp or 0, ready, stop)
    except KeyboardInterrupt:
        stop.set()
    except OSError as e:
        where = f"127.0.0.1:{args.tcp}" if args.tcp is not None else "a pty"
        raise UsageError(f"cannot serve on {where}: {e.strerror or e}"
                         + ("; choose another --tcp port (0: any free one)" if args.tcp is not None else "")) from None
    return 0


def _out_file(path, suffix, what):
    """check_out_file, and an existing path must be a regular file (never replace a device)."""
    p = check_out_file(path, suffix, what)
    if p.exists() and not p.is_file():
        raise UsageError(f"{what} {p} is not a regular file; choose another path")
    return p


def _parser() -> Parser:
    ap = Parser(prog=PROG, description="Send images to a board running an ELRT layer engine.")
    ap.add_argument("--port", help="serial port / pty / pyserial URL (loop://, socket://HOST:PORT)")
    ap.add_argument("--baud", type=int_range(MIN_BAUD, MAX_BAUD), default=115200,
                    help=f"UART baud rate ({MIN_BAUD}..{MAX_BAUD:,}; default 115200)")
    ap.add_argument("--timeout", type=float_range(0.0, 3600.0, lo_open=True), default=2.0,
                    help="seconds to wait for an answer, plus transfer time (0 < T <= 3600; default 2)")
    ap.add_argument("--retries", type=int_range(0, 100), default=3, help="retries per request (0..100; default 3)")
    ap.add_argument("--json", default=None, help="write a JSON record of the run here")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    sub.add_parser("info", help="ask the board what it runs")
    inf = sub.add_parser("infer", help="send frames, print the outputs")
    src = inf.add_mutually_exclusive_group(required=True)
    src.add_argument("--npy", help="integer input tensors (N, C, H, W) or (C, H, W)")
    src.add_argument("--digits", type=int_range(1, DIGITS),
                     help=f"send the first N scikit-learn digits (1..{DIGITS}; quantised; needs --artifact)")
    inf.add_argument("--offset", type=int_range(0, DIGITS - 1), default=0,
                     help=f"first digit index (0..{DIGITS - 1}; default 0)")
    inf.add_argument("--artifact", default=None)
    inf.add_argument("--labels", default=None,
                     help="integer labels (N,) of the --npy frames, for the accuracy (default: a test_labels.npy "
                          "beside a test_inputs.npy)")
    inf.add_argument("--layer", default=None, help="the board's layer in the artifact (default: the whole network)")
    inf.add_argument("--check", action="store_true", help="compare every output with the golden model")
    inf.add_argument("--batch", type=int_range(1, P.MAX_BATCH), default=None,
                     help=f"frames per request (1..{P.MAX_BATCH}; default: as many as the board takes)")
    inf.add_argument("--out", default=None, help="save the outputs (N, C, H, W) at exactly this .npy path")
    srv = sub.add_parser("serve", help="run a Python model of the board on a pty (or --tcp PORT)")
    srv.add_argument("--artifact", required=True)
    srv.add_argument("--layer", default=None, help="the layer the model runs (default: the whole network)")
    srv.add_argument("--tcp", type=int_range(0, 65535), default=None,
                     help="listen on 127.0.0.1:PORT instead of a pty (0..65535; 0: any free port)")
    srv.add_argument("--board-timeout", type=float_range(0.0, 60.0, lo_open=True), default=0.02,
                     help="the model's idle timeout in seconds (0 < T <= 60; default 0.02)")
    return ap


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    from artifact import ArtifactError
    if args.cmd == "serve":
        try:
            return _cmd_serve(args)
        except (UsageError, ArtifactError, OSError) as e:
            return fail(PROG, e)
    out = {"command": args.cmd, "port": args.port}
    prep = None
    try:
        if not args.port or not args.port.strip():
            raise UsageError("--port is required: a serial device, a pty path or a pyserial URL (socket://HOST:PORT)")
        if args.json is not None:
            _out_file(args.json, None, "--json")
        if args.cmd == "infer":
            if args.out is not None:
                _out_file(args.out, ".npy", "--out")
            prep = _prepare_infer(args)
    except (UsageError, ArtifactError, OSError) as e:
        return fail(PROG, e)
    try:
        port = open_port(args.port, args.baud)
    except UsageError as e:
        return fail(PROG, e)
    except Exception as e:                  # noqa: BLE001 - serial.SerialException, OSError, ValueError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return fail(PROG, f"cannot open {args.port}: {msg}")
    link = P.Link(port, timeout=args.timeout, retries=args.retries,
                  log=lambda m: sys.stderr.write(f"host: {m}\n"))
    try:
        rc = _cmd_info(link, args, out) if args.cmd == "info" else _cmd_infer(link, args, out, prep)
    except (ValueError, OSError) as e:      # UsageError, ArtifactError, a frame the protocol cannot carry
        rc = fail(PROG, e)
    except P.ProtocolError as e:
        rc = fail(PROG, e, 1)
    finally:
        port.close()
    out["returncode"] = rc
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps(out, indent=1, default=str) + "\n")
        except OSError as e:
            return fail(PROG, e)
    return rc


if __name__ == "__main__":
    sys.exit(main())
