"""Host-side tool: send images to a board's serial port, print what comes back.

::

    python -m deploy.host --port PORT [--baud 115200] info
    python -m deploy.host --port PORT infer --npy FILE.npy [--artifact DIR [--layer NAME] --check] [--out Y.npy]
    python -m deploy.host --port PORT infer --digits N --artifact DIR [--layer NAME] [--check]
    python -m deploy.host serve --artifact DIR [--layer NAME] [--tcp PORT]     # a board model on a pty/socket

``PORT`` is anything pyserial opens: ``/dev/ttyUSB0``, a pty path, ``loop://``,
``socket://HOST:PORT``. The board describes its layer (``info``: input and output
shapes, bit widths, clock, baud), so ``infer`` needs no artifact unless it has to
quantise images (``--digits``: scikit-learn's 8x8 digits, scaled to [-1, 1] as in
training and quantised with :func:`artifact.golden.quantize_input` and the artifact's
input record) or check the answers against the golden model (``--check``).

Input ``.npy``: integer tensors ``(N, C, H, W)`` or one ``(C, H, W)`` frame, already in
the layer input's integer range. With ``--json FILE`` a machine-readable record of the
run is written. Exit status: 0 all frames answered (and matched, with ``--check``),
1 a mismatch or a failed request, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np

from artifact.files import atomic_write_text
from deploy.fpga import protocol as P

__all__ = ["main", "open_port", "digits_images"]


def open_port(url: str, baud: int, timeout: float = 0.05):
    """A pyserial port for ``url`` (device path, pty, loop://, socket://...)."""
    try:
        import serial
    except ImportError:
        raise SystemExit("error: pyserial is not installed: `pip install pyserial`") from None
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
    if name:
        return art.layer(name)["name"]
    from deploy.fpga.build import default_layer
    return default_layer(art)


def _cmd_info(link, args, out) -> int:
    info = link.board_info()
    rec = info.as_dict()
    print(f"board: {info.op} layer, input {list(info.in_shape)} x {info.in_bits}-bit "
          f"{'signed' if info.in_signed else 'unsigned'} -> output {list(info.out_shape)} x {info.out_bits}-bit "
          f"{'signed' if info.out_signed else 'unsigned'}")
    print(f"       {info.multipliers} multipliers, {info.cycles_per_frame} cycles/frame, clock "
          f"{info.clk_hz / 1e6:g} MHz, {info.baud} baud, idle timeout {info.timeout_s * 1e3:g} ms")
    out["info"] = rec
    return 0


def _cmd_infer(link, args, out) -> int:
    from artifact import load_artifact
    art = load_artifact(args.artifact) if args.artifact else None
    labels = None
    if args.digits:
        if art is None:
            raise ValueError("--digits needs --artifact (for the input quantiser)")
        x, labels = digits_images(art, args.digits, args.offset)
    else:
        x = np.load(args.npy)
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{args.npy}: expected integer tensors, got {x.dtype} (quantise them first)")
        x = x.astype(np.int64)
    info = link.board_info()
    if x.ndim == len(info.in_shape):
        x = x[None]
    layer = _layer_for(art, args.layer) if art is not None else None
    if args.digits and art is not None:
        rec = art.layer(layer)
        if "input" not in rec["inputs"]:
            raise ValueError(f"--digits images are the network input, but layer {layer!r} takes {rec['inputs']}")
    if tuple(x.shape[1:]) != tuple(info.in_shape):
        raise ValueError(f"input frames have shape {tuple(x.shape[1:])}, the board's layer takes {info.in_shape}")
    golden = None
    if args.check:
        if art is None:
            raise ValueError("--check needs --artifact")
        from artifact.golden import run_layer
        rec = art.layer(layer)
        shape = rec.get("in", rec.get("stages", [rec])[0]["in"])["shape"]
        golden, _ = run_layer(rec, [x.reshape(len(x), *shape)], art.tensors)
        golden = golden.reshape(len(x), *info.out_shape)
    ys, results, bad = [], [], 0
    t0 = time.monotonic()
    for i, frame in enumerate(x):
        t = time.monotonic()
        y = link.infer(frame)
        dt = time.monotonic() - t
        ys.append(y)
        r = {"index": i, "seconds": round(dt, 4), "out_shape": list(y.shape)}
        line = f"frame {i}: output {list(y.shape)}"
        flat = y.reshape(-1)
        if y.size <= 16 or info.op == "linear":
            line += f" = {flat.tolist()}"
            if info.op == "linear":
                r["argmax"] = int(np.argmax(flat))
                line += f" -> class {r['argmax']}"
        else:
            line += f" min {int(flat.min())} max {int(flat.max())} sum {int(flat.sum())} first {flat[:6].tolist()}"
        if labels is not None:
            r["label"] = int(labels[i])
            line += f" (label {int(labels[i])})"
        if golden is not None:
            diff = int(np.count_nonzero(y != golden[i]))
            r["mismatches"] = diff
            bad += diff > 0
            line += " | golden: " + ("match" if diff == 0 else f"{diff} of {y.size} differ")
        line += f" [{dt * 1e3:.1f} ms]"
        print(line)
        results.append(r)
    total = time.monotonic() - t0
    print(f"{len(x)} frame(s) in {total:.2f} s ({len(x) / max(total, 1e-9):.1f} frames/s over the link)"
          + (f", {link.retried} retried request(s)" if link.retried else "")
          + ("" if golden is None else f"; {len(x) - bad}/{len(x)} bit-exact against the golden model"))
    if args.out:
        np.save(args.out, np.stack(ys))
    out.update(frames=results, seconds=round(total, 3), retried=link.retried,
               bit_exact=None if golden is None else bad == 0)
    return 1 if bad else 0


def _cmd_serve(args) -> int:
    from artifact import load_artifact
    from deploy.fpga.board_model import BoardModel, model_info, serve
    art = load_artifact(args.artifact)
    layer = _layer_for(art, args.layer)
    model = BoardModel(art, layer, model_info(art, layer, baud=args.baud, timeout_s=args.board_timeout))
    stop = threading.Event()

    def ready(addr):
        print(f"board model of layer {layer!r} on {addr} (Ctrl-C to stop)", flush=True)
    try:
        serve(model, "tcp" if args.tcp is not None else "pty", args.tcp or 0, ready, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def main(argv=None) -> int:
    ap = _Parser(prog="python -m deploy.host", description="Send images to a board running an ELRT layer engine.")
    ap.add_argument("--port", help="serial port / pty / pyserial URL (loop://, socket://HOST:PORT)")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer (plus transfer time)")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--json", default=None, help="write a JSON record of the run here")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="ask the board what it runs")
    inf = sub.add_parser("infer", help="send frames, print the outputs")
    src = inf.add_mutually_exclusive_group(required=True)
    src.add_argument("--npy", help="integer input tensors (N, C, H, W) or (C, H, W)")
    src.add_argument("--digits", type=int, help="send the first N scikit-learn digits (quantised; needs --artifact)")
    inf.add_argument("--offset", type=int, default=0, help="first digit index")
    inf.add_argument("--artifact", default=None)
    inf.add_argument("--layer", default=None, help="the board's layer in the artifact (default: largest Tucker-2)")
    inf.add_argument("--check", action="store_true", help="compare every output with the golden model")
    inf.add_argument("--out", default=None, help="save the outputs (N, C, H, W) as .npy")
    srv = sub.add_parser("serve", help="run a Python model of the board on a pty (or --tcp PORT)")
    srv.add_argument("--artifact", required=True)
    srv.add_argument("--layer", default=None)
    srv.add_argument("--tcp", type=int, default=None, help="listen on 127.0.0.1:PORT instead of a pty (0: any)")
    srv.add_argument("--board-timeout", type=float, default=0.02, help="the model's idle timeout (s)")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return _cmd_serve(args)
    if not args.port:
        ap.error("--port is required")
    from artifact import ArtifactError
    out = {"command": args.cmd, "port": args.port}
    try:
        port = open_port(args.port, args.baud)
    except Exception as e:                  # noqa: BLE001 - serial.SerialException and OSError
        sys.stderr.write(f"error: cannot open {args.port}: {str(e).splitlines()[0] if str(e) else e}\n")
        return 2
    link = P.Link(port, timeout=args.timeout, retries=args.retries,
                  log=lambda m: sys.stderr.write(f"host: {m}\n"))
    try:
        rc = _cmd_info(link, args, out) if args.cmd == "info" else _cmd_infer(link, args, out)
    except (ValueError, ArtifactError, OSError) as e:
        sys.stderr.write(f"error: {str(e).splitlines()[0]}\n")
        rc = 2
    except P.ProtocolError as e:
        sys.stderr.write(f"error: {e}\n")
        rc = 1
    finally:
        port.close()
    out["returncode"] = rc
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1, default=str) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
