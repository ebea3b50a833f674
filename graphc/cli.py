"""The ``graphc`` command line: compile, run, inspect and bench models.

    graphc compile model.onnx -o model.gcx         # write an artifact
    graphc run model.gcx --input data=x.npy        # run it (random inputs when none are given)
    graphc inspect zoo:resnet50 --html report.html # ops, FLOPs, passes, memory; HTML with a chart
    graphc bench zoo:squeezenet --vs onnxruntime   # time it against onnxruntime on the same inputs

Exit codes: 0 success; 2 a user error (a bad model, input or option: one ``graphc: error:`` line on stderr,
argparse usage errors too); 1 an internal error (a bug in graphc: rerun with ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .backends import KNOWN_TARGETS as TARGETS
from .errors import GraphcError, InputError, OptionError
from .options import PRECISIONS, RUNTIMES
ARTIFACT_SUFFIX = ".gcx"
_ZIP_MAGIC = b"PK\x03\x04"


# ============================================================================================ entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    debug = bool(getattr(args, "debug", False))
    try:
        return args.func(args) or 0
    except GraphcError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("graphc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `graphc inspect ... | head`
        _quiet_stdout()
        return 0
    except Exception as exc:  # a bug in graphc
        if debug:
            traceback.print_exc()
        print(f"graphc: internal error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        if not debug:
            print("graphc: this is a bug in graphc; rerun with --debug for the traceback and report it",
                  file=sys.stderr)
        return 1


def _error(message: str) -> None:
    print(f"graphc: error: {_one_line(message)}", file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _quiet_stdout() -> None:
    try:  # stop Python complaining again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _note(message: str) -> None:
    print(f"graphc: {message}", file=sys.stderr)


# ============================================================================================ the parser


_EPILOG = """\
MODEL is an .onnx file or zoo:NAME (resnet50, densenet121, inception_v1, inception_v2,
shufflenet, squeezenet, vgg19, bvlc_alexnet, zfnet512).

examples:
  graphc compile model.onnx -o model.gcx
  graphc run model.gcx --input data=x.npy --output results/
  graphc inspect zoo:resnet50 --html resnet50.html
  graphc bench zoo:squeezenet --vs onnxruntime --threads 4

Errors in models, inputs or options exit with status 2 and one 'graphc: error:' line;
run 'graphc COMMAND --help' for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks for errors")
    parser = argparse.ArgumentParser(
        prog="graphc",
        description="graphc: a graph compiler for neural networks. ONNX in, fused kernels out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG)
    # the subcommands' --debug (shared action objects, default SUPPRESS) must not reset this one
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_compile(sub, common)
    _add_run(sub, common)
    _add_inspect(sub, common)
    _add_bench(sub, common)
    _add_plan(sub, common)
    from .cache import add_cli_command

    add_cli_command(sub, common)  # graphc cache info|list|clear
    return parser


def _add_target(p: argparse.ArgumentParser, what: str = "compile for") -> None:
    p.add_argument("--target", choices=TARGETS, default=None,
                   help=f"backend to {what} (default: llvm when available, else reference)")
    p.add_argument("--passes", metavar="LIST", default=None,
                   help="edit the pass pipeline: '+name' adds a pass (a plugin), '-name' drops one; "
                        "or a plain comma-separated list replaces it (see docs/passes.md)")


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="numeric precision: fp32 (default), or mixed (bf16 GEMM/conv operands, fp32 accumulation)")


CALIBRATE_HELP = ("with 2+ CPU devices: time the model's kernels on one core of this host first (llvm code, "
                  "the profiler) and balance the stages on those times instead of nominal ones")


def _add_compile(sub, common) -> None:
    p = sub.add_parser("compile", parents=[common], help="compile a model and write an artifact (.gcx)",
                       description="Compile MODEL and write a self-contained artifact that 'graphc run' and "
                                   "graphc.load() read back.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file or zoo:NAME")
    p.add_argument("-o", "--output", metavar="OUT", help="artifact path (default: <model stem>.gcx here)")
    _add_target(p)
    p.add_argument("--devices", metavar="D", help="devices, e.g. cpu:0, cuda:0-7 or a count")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="how a model over 2+ devices runs: local (worker processes on this host, the default) or "
                        "ray (Ray actors; pip install 'graphc[ray]'); kept in the artifact")
    p.add_argument("--calibrate", action="store_true", help=CALIBRATE_HELP)
    _add_precision(p)
    p.add_argument("--threads", type=_non_negative, default=None, metavar="N",
                   help="worker threads (default 0: all cores)")
    _add_cache_flag(p)
    p.set_defaults(func=cmd_compile)


def _add_run(sub, common) -> None:
    p = sub.add_parser("run", parents=[common], help="run an artifact or a model on inputs",
                       description="Run ARTIFACT_OR_MODEL (a .gcx artifact is loaded, anything else compiled). "
                                   "Without --input, seeded random inputs are used.")
    p.add_argument("model", metavar="ARTIFACT_OR_MODEL", help="a .gcx artifact, an .onnx file or zoo:NAME")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input array; repeat for each input (FILE.npy alone for a one-input model)")
    p.add_argument("--output", "-o", metavar="DIR", help="write each output to DIR/NAME.npy")
    _add_target(p, "compile for when given a model")
    _add_precision(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--batch", type=_positive, default=1, metavar="B",
                   help="size of symbolic dimensions in random inputs (default 1)")
    _add_cache_flag(p)
    p.set_defaults(func=cmd_run)


def _add_inspect(sub, common) -> None:
    p = sub.add_parser("inspect", parents=[common], help="show ops, FLOPs, passes and memory of a model",
                       description="Compile (or load) a model and show its inputs and outputs, parameters, "
                                   "FLOPs per op type, fusion, the passes' decisions and the memory plan.")
    p.add_argument("model", metavar="MODEL_OR_ARTIFACT", help="an .onnx file, zoo:NAME or a .gcx artifact")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with a FLOPs chart")
    p.add_argument("--json", action="store_true", help="print report() as JSON instead of tables")
    p.add_argument("--nodes", action="store_true", help="also list every kernel with its types and FLOPs")
    _add_target(p)
    _add_precision(p)
    _add_cache_flag(p)
    p.set_defaults(func=cmd_inspect)


def _add_bench(sub, common) -> None:
    from .bench import DEFAULT_REPEAT, DEFAULT_WARMUP, WEIGHTS

    p = sub.add_parser("bench", parents=[common], help="time a model, optionally against onnxruntime",
                       description="Time MODEL with graphc and, with --vs onnxruntime, with onnxruntime on the "
                                   "same inputs and thread count in this process; check that the outputs agree.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file or zoo:NAME")
    p.add_argument("--vs", choices=("onnxruntime",), default=None, help="also time this engine")
    p.add_argument("--threads", type=_non_negative, default=0, metavar="N",
                   help="threads for both engines (default 0: all cores)")
    p.add_argument("--repeat", type=_positive, default=DEFAULT_REPEAT, metavar="R",
                   help=f"timed runs (default {DEFAULT_REPEAT})")
    p.add_argument("--warmup", type=_non_negative, default=DEFAULT_WARMUP, metavar="W",
                   help=f"untimed runs first (default {DEFAULT_WARMUP})")
    p.add_argument("--batch", type=_positive, default=1, metavar="B", help="size of symbolic dimensions (default 1)")
    p.add_argument("--weights", choices=WEIGHTS, default="constant",
                   help="zoo models: keep the constant weights or use seeded random ones (default constant)")
    _add_target(p)
    _add_precision(p)
    p.add_argument("--profile", action="store_true",
                   help="also time every kernel (llvm target) and print the slowest, with GFLOP/s and code generator")
    p.set_defaults(func=cmd_bench)


def _add_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="use the compile cache ($GRAPHC_CACHE_DIR, else ~/.cache/graphc); default: only when "
                        "GRAPHC_CACHE_DIR is set (see 'graphc cache')")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ============================================================================================ shared helpers


def is_artifact(path: str) -> bool:
    """A .gcx path, or any existing file that starts like a zip archive (artifacts are zips; ONNX is not)."""
    if path.endswith(ARTIFACT_SUFFIX):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def obtain(model: str, target: str | None = None, **options: Any):
    """A CompiledModel: load an artifact, or compile a model."""
    import graphc

    if is_artifact(model):
        if options.get("passes"):
            raise OptionError(f"{model!r} is an artifact: its passes already ran; --passes applies to models")
        if options.get("precision", "fp32") != "fp32":
            raise OptionError(f"{model!r} is an artifact: its precision was chosen when it was compiled; "
                              "--precision applies to models")
        compiled = graphc.load(model)
        if target and target != compiled.target:
            raise OptionError(f"{model!r} is an artifact compiled for target {compiled.target!r}; --target "
                              f"{target} applies to models only (recompile the model with graphc compile)")
        return compiled
    return graphc.compile(model, target=target, **options)


def default_artifact_path(model: str) -> str:
    """``resnet.onnx`` -> ``resnet.gcx`` in the current directory; ``zoo:resnet50`` -> ``resnet50.gcx``."""
    if model.startswith("zoo:"):
        stem = model[len("zoo:"):]
    else:
        stem = os.path.splitext(os.path.basename(model.rstrip("/\\")))[0] or "model"
    return stem + ARTIFACT_SUFFIX


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def describe_array(value: Any) -> str:
    """``float32[1,1000] min=... max=... mean=...`` for an output."""
    if isinstance(value, list):
        return f"sequence of {len(value)} tensor(s)"
    if value is None:
        return "empty optional"
    arr = np.asarray(value)
    head = f"{arr.dtype.name}[{','.join(str(d) for d in arr.shape)}]"
    if arr.size == 0 or arr.dtype.kind not in "biufcV":
        return head
    try:
        data = arr.astype(np.float64) if arr.dtype.kind != "c" else np.abs(arr)
    except (TypeError, ValueError):
        return head
    return f"{head} min={np.min(data):.6g} max={np.max(data):.6g} mean={np.mean(data):.6g}"


# ============================================================================================ compile


def cmd_compile(args: argparse.Namespace) -> int:
    import graphc

    out = args.output or default_artifact_path(args.model)
    if args.model.endswith(ARTIFACT_SUFFIX):
        raise OptionError(f"{args.model!r} is already an artifact; give an .onnx model or zoo:NAME")
    extra = {"partition_calibration": "measure"} if args.calibrate else {}
    compiled = graphc.compile(args.model, target=args.target, devices=args.devices, precision=args.precision,
                              threads=args.threads, passes=args.passes, cache=args.cache, runtime=args.runtime,
                              **extra)
    path = compiled.save(out)
    report = compiled.report()
    print(f"compiled {compiled.source} for {compiled.target}: {report.get('nodes')} nodes -> "
          f"{report.get('kernels')} kernels in {compiled.compile_seconds:.2f}s"
          f"{' (compile cache hit)' if (report.get('cache') or {}).get('hit') else ''}; wrote {path}")
    return 0


# ============================================================================================ run


def parse_input_specs(specs: list[str], input_names: list[str]) -> dict[str, str]:
    """``["data=x.npy", ...]`` -> ``{"data": "x.npy"}``; a bare FILE is allowed for a one-input model."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, file = spec.rpartition("=")
        if not sep:
            if len(input_names) != 1 or len(specs) != 1:
                raise OptionError(f"--input {spec!r}: expected NAME=FILE.npy (the model's inputs: "
                                  f"{', '.join(input_names)})")
            name, file = input_names[0], spec
        if not name or not file:
            raise OptionError(f"--input {spec!r}: expected NAME=FILE.npy")
        if name not in input_names:
            raise InputError(f"--input {spec!r}: the model has no input {name!r}; its inputs: "
                             f"{', '.join(input_names)}")
        if name in out:
            raise OptionError(f"--input: input {name!r} given twice")
        out[name] = file
    return out


def load_npy(name: str, file: str) -> np.ndarray:
    """Read one .npy file (no pickles), with errors a user can act on."""
    try:
        value = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"input {name!r}: file {file!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {name!r}: {file!r} is a directory, not a .npy file") from None
    except OSError as exc:
        raise InputError(f"input {name!r}: cannot read {file!r}: {exc.strerror or exc}") from None
    except (ValueError, EOFError) as exc:
        raise InputError(f"input {name!r}: {file!r} is not a readable .npy file ({_one_line(str(exc))})") from None
    if not isinstance(value, np.ndarray):  # an .npz archive
        value.close()
        raise InputError(f"input {name!r}: {file!r} is an .npz archive; give one array per .npy file")
    return value


def gather_inputs(compiled, specs: list[str], seed: int, batch: int) -> dict[str, np.ndarray]:
    from .bench import random_inputs

    if not specs:
        feeds = random_inputs(compiled, seed=seed, batch=batch)
        if feeds:
            _note(f"no --input given: using seeded random inputs (seed {seed}) for "
                  + ", ".join(f"{n}: {describe_array(v).split(' ')[0]}" for n, v in feeds.items()))
        return feeds
    files = parse_input_specs(specs, compiled.input_names)
    return {name: load_npy(name, file) for name, file in files.items()}


def safe_file_name(name: str) -> str:
    """An output name as a file name: path separators and odd characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return cleaned or "output"


def write_outputs(outputs: dict[str, Any], directory: str) -> list[str]:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"--output {directory!r}: cannot create the directory: {exc.strerror or exc}") from None
    written, used = [], set()
    for name, value in outputs.items():
        base = safe_file_name(name)
        stem, i = base, 1
        while stem in used:
            i += 1
            stem = f"{base}_{i}"
        used.add(stem)
        path = os.path.join(directory, stem + ".npy")
        try:
            np.save(path, np.asarray(value), allow_pickle=False)
        except OSError as exc:
            raise OptionError(f"--output: cannot write {path!r}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise OptionError(f"--output: output {name!r} cannot be saved as .npy: {exc}") from None
        written.append(path)
    return written


def cmd_run(args: argparse.Namespace) -> int:
    compiled = obtain(args.model, args.target, passes=args.passes, cache=args.cache, precision=args.precision)
    feeds = gather_inputs(compiled, args.input, args.seed, args.batch)
    outputs = compiled.run(feeds)
    width = max((len(n) for n in outputs), default=0)
    for name, value in outputs.items():
        print(f"{name.ljust(width)}  {describe_array(value)}")
    if args.output:
        paths = write_outputs(outputs, args.output)
        _note(f"wrote {len(paths)} output(s) to {args.output}")
    return 0


# ============================================================================================ inspect


@dataclass
class Table:
    """A titled table, rendered as text by the CLI and as HTML by ``--html``."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: tuple[int, ...] = ()  # columns to right-align


def model_tables(compiled, with_nodes: bool = False) -> list[Table]:
    report = compiled.report()
    tables = [summary_table(compiled, report), signature_table(compiled), op_table(report)]
    fusion = fusion_table(compiled)
    if fusion is not None:
        tables.append(fusion)
    if with_nodes:
        tables.append(node_table(compiled))
    if isinstance(report.get("pipeline"), dict) and report["pipeline"].get("passes"):
        tables.append(pipeline_table(report["pipeline"]))
    tables.append(pass_table(report))
    precision = precision_table(report.get("precision") or {})
    if precision is not None:
        tables.append(precision)
    tables.append(memory_table(report))
    partition = report.get("partition")
    if partition:
        tables.append(partition_table(partition))
    return tables


def summary_table(compiled, report: dict) -> Table:
    mem = report.get("memory", {})
    rows = [
        ["source", str(compiled.source)],
        ["target", str(compiled.target)],
        ["nodes (imported)", str(report.get("nodes"))],
        ["kernels (after passes)", str(report.get("kernels"))],
        ["parameters", f"{report.get('params', 0):,}"],
        ["weight bytes", human_bytes(mem.get("weights_bytes", 0))],
        ["total FLOPs", f"{human_count(report.get('flops', 0))} ({report.get('flops', 0):,})"],
        ["compile time", f"{compiled.compile_seconds:.3f} s"],
    ]
    if report.get("fallback_ops"):
        rows.append(["fallback ops", ", ".join(map(str, report["fallback_ops"]))])
    return Table("Model", ["", ""], rows)


def precision_table(summary: dict) -> Table | None:
    """Mixed precision: which dot products run in bf16, which stay fp32 and why, the measured error."""
    if summary.get("mode", "fp32") == "fp32":
        return None
    rows = [["mode", f"{summary.get('mode')}: {summary.get('compute_dtype')} operands, "
                     f"{summary.get('accumulate_dtype')} accumulation, {summary.get('storage_dtype')} storage"],
            ["bf16 nodes", f"{len(summary.get('bf16_nodes', []))} ({summary.get('bf16_flops_fraction', 0):.1%} of FLOPs)"]]
    rows += [[f"fp32: {name}", reason] for name, reason in (summary.get("fp32_dot_nodes") or {}).items()]
    error = summary.get("error") or {}
    if "not_measured" in error:
        rows.append(["error vs fp32", f"not measured: {error['not_measured']}"])
    for name, e in (error.get("outputs") or {}).items():
        top1 = "" if "top1_agrees" not in e else f", top-1 {'same' if e['top1_agrees'] else 'DIFFERS'}"
        rows.append([f"error vs fp32: {name}", f"max rel {e['max_rel']:.2e}, max abs {e['max_abs']:.2e}{top1}"])
    return Table("Precision", ["", ""], rows)


def signature_table(compiled) -> Table:
    graph = compiled.plan.graph
    rows = [["input", v.name, str(v.type)] for v in graph.inputs]
    rows += [["output", v.name, str(v.type)] for v in graph.outputs]
    return Table("Inputs and outputs", ["kind", "name", "type"], rows)


def op_table(report: dict) -> Table:
    counts = report.get("ops", {})
    flops = report.get("flops_by_op", {})
    total = sum(flops.values()) or 0
    names = sorted(set(counts) | set(flops), key=lambda k: (-flops.get(k, 0), -counts.get(k, 0), k))
    rows = []
    for name in names:
        f = flops.get(name, 0)
        share = f"{100 * f / total:.1f}%" if total and f else "-"
        rows.append([name, str(counts.get(name, 0)), human_count(f) if f else "-", share])
    rows.append(["total", str(sum(counts.values())), human_count(total) if total else "-",
                 "100.0%" if total else "-"])
    return Table("Op types", ["op", "count", "FLOPs", "share"], rows, numeric=(1, 2, 3))


def _members(node) -> str:
    inner = [n.op_type for g in node.subgraphs() for n in g.nodes] if node.subgraphs() else []
    return "+".join(inner)


def fusion_table(compiled) -> Table | None:
    """Fusion groups: kernels that are FusedKernel nodes, or nodes sharing ``meta['fusion_group']``."""
    groups: dict[Any, list[str]] = {}
    for node in compiled.plan.graph.nodes:
        meta = getattr(node, "meta", None) or {}
        group = meta.get("fusion_group") if isinstance(meta, dict) else None
        if group is not None:
            groups.setdefault(group, []).append(node.op_type)
        elif node.op_type == "FusedKernel" and _members(node):
            groups[f"{node.name or id(node)}"] = _members(node).split("+")
    if not groups:
        return None
    rows = [[str(g), str(len(ops)), " + ".join(ops)] for g, ops in groups.items()]
    return Table("Fusion groups", ["group", "ops", "members"], rows, numeric=(1,))


def node_table(compiled) -> Table:
    from .analysis import node_cost

    rows = []
    for i, node in enumerate(compiled.plan.graph.nodes):
        outs = ", ".join(f"{o.name}: {o.type}" for o in node.outputs if o is not None)
        ins = ", ".join(v.name if v is not None else "-" for v in node.inputs)
        op = node.op_type + (f" [{_members(node)}]" if _members(node) else "")
        flops = node_cost(node).flops
        rows.append([str(i), op, ins, outs, human_count(flops) if flops else "-"])
    return Table("Kernels", ["#", "op", "inputs", "outputs", "FLOPs"], rows, numeric=(0, 4))


def pipeline_table(pipeline: dict) -> Table:
    """Which passes ran, whether each changed the graph, and how long it took."""
    rows = []
    for p in pipeline.get("passes", []):
        if not isinstance(p, dict):
            continue
        rows.append([str(p.get("name", "?")), "yes" if p.get("changed") else "no",
                     f"{1e3 * float(p.get('seconds') or 0):.2f}"])
    if "seconds" in pipeline:
        rows.append(["total", "yes" if pipeline.get("changed") else "no", f"{1e3 * float(pipeline['seconds']):.2f}"])
    return Table("Passes run", ["pass", "changed", "ms"], rows, numeric=(2,))


def pass_table(report: dict) -> Table:
    rows = []
    for d in report.get("passes", []):
        data = d.get("data") or {}
        extra = ", ".join(f"{k}={v}" for k, v in data.items())
        rows.append([str(d.get("pass", "")), str(d.get("message", "")), extra])
    return Table("Pass decisions", ["pass", "decision", "data"], rows)


def memory_table(report: dict) -> Table:
    mem = report.get("memory", {})
    rows = []
    for key, value in mem.items():
        if key.endswith("_bytes"):
            rows.append([key, human_bytes(value), f"{value:,}"])
        else:
            rows.append([key, str(value), ""])
    arena, bound = mem.get("arena_bytes"), mem.get("lower_bound_bytes")
    if arena and bound:
        rows.append(["arena / lower bound", f"{arena / bound:.3f}", ""])
    return Table("Memory", ["measure", "value", "bytes"], rows, numeric=(1, 2))


def partition_table(partition: dict) -> Table:
    rows = []
    for i, dev in enumerate(partition.get("devices", [])):
        rows.append([str(dev.get("device", i)), str(dev.get("ops", "")), human_count(dev.get("flops", 0)),
                     human_bytes(dev.get("peak_bytes", 0)), human_bytes(dev.get("capacity_bytes", 0)),
                     f"{1e3 * dev.get('predicted_s', 0):.3f}"])
    for key in ("bottleneck_s", "lower_bound_s"):
        if key in partition:
            rows.append([key, "", "", "", "", f"{1e3 * partition[key]:.3f}"])
    if "predicted_throughput" in partition:
        rows.append(["predicted_throughput", "", "", "", "", f"{partition['predicted_throughput']:.2f}/s"])
    return Table("Partition", ["device", "ops", "FLOPs", "peak", "capacity", "predicted ms"], rows,
                 numeric=(1, 2, 3, 4, 5))


def render_text(tables: list[Table]) -> str:
    parts = []
    for t in tables:
        parts.append(t.title)
        if not t.rows:
            parts.append("  (none)")
            parts.append("")
            continue
        show_headers = any(t.headers)
        rows = ([t.headers] if show_headers else []) + t.rows
        widths = [max(len(r[i]) for r in rows) for i in range(len(t.headers))]
        for j, row in enumerate(rows):
            cells = [c.rjust(w) if i in t.numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            parts.append("  " + "  ".join(cells).rstrip())
            if show_headers and j == 0:
                parts.append("  " + "  ".join("-" * w for w in widths))
        parts.append("")
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:75em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .7em;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
svg text{font:12px system-ui,sans-serif}"""


def flops_svg(report: dict, width: int = 720) -> str:
    """An inline SVG bar chart of FLOPs per op type (largest first)."""
    flops = sorted(((k, v) for k, v in report.get("flops_by_op", {}).items() if v), key=lambda kv: -kv[1])
    if not flops:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="30"><text x="4" y="20">' \
               'no FLOP estimates for this model</text></svg>'
    bar_h, gap, label_w, value_w = 18, 4, 170, 90
    height = len(flops) * (bar_h + gap) + gap
    top = flops[0][1]
    total = sum(v for _, v in flops)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="FLOPs per op type">']
    span = width - label_w - value_w
    for i, (name, value) in enumerate(flops):
        y = gap + i * (bar_h + gap)
        w = max(1.0, span * value / top)
        share = 100 * value / total
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end">{html.escape(name)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4a7bd0">'
                     f'<title>{html.escape(name)}: {value:,} FLOPs ({share:.1f}%)</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 5}">{human_count(value)} '
                     f'({share:.1f}%)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
            "#bab0ac", "#86bcb6", "#d37295")


def _buffer_category(op: str) -> str:
    return "fused " + op.split(":", 1)[1] if op.startswith("FusedKernel:") else (op or "?")


def memory_svg(compiled, width: int = 1000, height: int = 520) -> str | None:
    """The memory plan as a picture: x = schedule step, y = arena address, one rectangle per buffer (colour by
    the producing kernel's kind, tooltip with value, size, lifetime), the live bytes per step as a grey outline
    and the lower bound LOAD as a dashed line. None when the model has no memory plan."""
    from .plan.memory import memory_plan_of

    plan = memory_plan_of(compiled.plan)
    if plan is None:
        return None
    esc = html.escape
    steps = max(plan.steps, 1)
    top = max(plan.arena_bytes, plan.lower_bound_bytes, 1)
    strip = 70  # the live-bytes chart under the plan
    left, right, up, down = 86, 190, 16, 34 + strip + 40
    pw, ph = width - left - right, height - up - down
    sx = pw / steps

    def X(step: float) -> float:
        return left + step * sx

    def Y(addr: float) -> float:
        return up + ph - addr * ph / top

    producers = {o.name: n for n in compiled.plan.graph.nodes for o in n.outputs if o is not None}
    categories: dict[str, str] = {}
    for b in sorted(plan.buffers, key=lambda b: -b.size):
        cat = _buffer_category(b.op)
        if cat not in categories:
            categories[cat] = _PALETTE[len(categories) % len(_PALETTE)] if len(categories) < len(_PALETTE) else "#999"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="memory plan: schedule step by arena address">',
             f'<rect x="{left}" y="{up}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    # y ticks
    for i in range(5):
        addr = top * i / 4
        parts.append(f'<line x1="{left - 4}" x2="{left + pw}" y1="{Y(addr):.1f}" y2="{Y(addr):.1f}" '
                     f'stroke="#e4e4e4"/><text x="{left - 6}" y="{Y(addr) + 4:.1f}" text-anchor="end">'
                     f'{esc(human_bytes(addr))}</text>')
    # x ticks: about 10
    tick = max(1, int(round(steps / 10 / 5.0)) * 5) if steps > 20 else max(1, steps // 10 or 1)
    for t in range(0, steps + 1, tick):
        parts.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{up + ph}" y2="{up + ph + 4}" stroke="#888"/>'
                     f'<text x="{X(t):.1f}" y="{up + ph + 16}" text-anchor="middle">{t}</text>'
                     f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{up + ph + 24 + strip}" y2="{up + ph + 28 + strip}" '
                     f'stroke="#888"/><text x="{X(t):.1f}" y="{up + ph + 40 + strip}" text-anchor="middle">{t}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">schedule step (kernel)</text>'
                 f'<text x="12" y="{up + ph / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {up + ph / 2:.1f})">arena address</text>')
    for b in sorted(plan.buffers, key=lambda b: b.offset):
        x, w = X(b.start), max((b.end - b.start + 1) * sx, 1.0)
        y0, y1 = Y(b.offset + b.size), Y(b.offset)
        node = producers.get(b.value)
        what = _members(node) if node is not None and _members(node) else (node.op_type if node else b.op)
        tip = (f"{b.value} ({what})\n{human_bytes(b.size)} ({b.size:,} bytes) at offset {b.offset:,}\n"
               f"live steps {b.start}..{b.end}" + (f"\nin place of {b.in_place_of}" if b.in_place_of else ""))
        parts.append(f'<rect x="{x:.2f}" y="{y0:.2f}" width="{w:.2f}" height="{max(y1 - y0, 0.8):.2f}" '
                     f'fill="{categories[_buffer_category(b.op)]}" stroke="#fff" stroke-width="0.6">'
                     f'<title>{esc(tip)}</title></rect>')
    # live bytes per step (the curve whose maximum is LOAD)
    from .plan.memory import _slots

    live = [0] * (steps + 1)
    for s in _slots(plan.buffers, plan.alignment):
        for t in range(s.start, min(s.end, steps - 1) + 1):
            live[t] += s.size
    # under the plan, aligned on its x axis: bytes live per step; its maximum is LOAD
    sy0 = up + ph + 24
    peak = max(live[:steps], default=0) or 1

    def SY(v: float) -> float:
        return sy0 + strip - v * strip / peak

    path = [f"M{X(0):.1f},{SY(0):.1f}"]
    for t in range(steps):
        path.append(f"L{X(t):.1f},{SY(live[t]):.1f}L{X(t + 1):.1f},{SY(live[t]):.1f}")
    path.append(f"L{X(steps):.1f},{SY(0):.1f}Z")
    peak_step = live.index(peak) if peak in live else 0
    parts.append(f'<rect x="{left}" y="{sy0}" width="{pw}" height="{strip}" fill="#fafafa" stroke="#ccc"/>'
                 f'<path d="{"".join(path)}" fill="#9db4d6" stroke="#4a6fa5" stroke-width="0.8">'
                 f'<title>bytes live per step (max = LOAD)</title></path>'
                 f'<line x1="{X(peak_step + 0.5):.1f}" x2="{X(peak_step + 0.5):.1f}" y1="{up}" y2="{sy0 + strip}" '
                 f'stroke="#d00" stroke-width="0.8" stroke-dasharray="2,3"><title>LOAD reached at step {peak_step}'
                 f'</title></line>'
                 f'<text x="{left - 6}" y="{sy0 + 10}" text-anchor="end">{esc(human_bytes(peak))}</text>'
                 f'<text x="{left + pw + 8}" y="{sy0 + strip / 2 + 4:.1f}">bytes live per step</text>'
                 f'<text x="{left + pw + 8}" y="{sy0 + strip / 2 + 20:.1f}" fill="#d00">peak: step {peak_step}'
                 f'</text>')
    ly, ay = Y(plan.lower_bound_bytes), Y(plan.arena_bytes)
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{ly:.1f}" y2="{ly:.1f}" stroke="#d00" '
                 f'stroke-dasharray="6,4" stroke-width="1.5"><title>LOAD {plan.lower_bound_bytes:,} bytes'
                 f'</title></line>')
    lx = left + pw + 8
    if plan.arena_bytes != plan.lower_bound_bytes:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{ay:.1f}" y2="{ay:.1f}" stroke="#000" '
                     f'stroke-width="1"/><text x="{lx}" y="{ay + 4:.1f}">arena {esc(human_bytes(plan.arena_bytes))}'
                     f'</text>')
        parts.append(f'<text x="{lx}" y="{ly + 14:.1f}" fill="#d00">LOAD {esc(human_bytes(plan.lower_bound_bytes))}'
                     f'</text>')
    else:
        parts.append(f'<text x="{lx}" y="{ly + 4:.1f}" fill="#d00">arena = LOAD</text>'
                     f'<text x="{lx}" y="{ly + 18:.1f}" fill="#d00">{esc(human_bytes(plan.lower_bound_bytes))}</text>')
    ly0 = up + 48
    for i, (cat, colour) in enumerate(categories.items()):
        y = ly0 + i * 17
        parts.append(f'<rect x="{lx}" y="{y}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{lx + 17}" y="{y + 10}">{esc(cat)}</text>')
    parts.append("</svg>")
    ratio = plan.arena_bytes / plan.lower_bound_bytes if plan.lower_bound_bytes else 1.0
    caption = (f"<p>{len(plan.buffers)} buffers in one arena of {esc(human_bytes(plan.arena_bytes))}: "
               f"{ratio:.3f} x the lower bound LOAD ({esc(human_bytes(plan.lower_bound_bytes))}); without reuse "
               f"{esc(human_bytes(plan.naive_bytes))}. Placement: {esc(plan.heuristic)}; "
               f"{plan.in_place_count} buffer(s) in place. Hover a rectangle for its value.</p>")
    return caption + "\n".join(parts)


def render_html(compiled, tables: list[Table]) -> str:
    """A self-contained page: the same tables plus the FLOPs chart, no external scripts or styles."""
    esc = html.escape
    body = [f"<h1>graphc inspect: {esc(str(compiled.source))}</h1>"]
    for t in tables:
        body.append(f"<h2>{esc(t.title)}</h2>")
        if t.title == "Op types":
            body.append(flops_svg(compiled.report()))
        if t.title == "Memory":
            picture = memory_svg(compiled)
            if picture:
                body.append(picture)
        if not t.rows:
            body.append("<p>(none)</p>")
            continue
        body.append("<table>")
        if any(t.headers):
            body.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in t.headers) + "</tr>")
        for row in t.rows:
            cells = "".join(f'<td class="n">{esc(c)}</td>' if i in t.numeric else f"<td>{esc(c)}</td>"
                            for i, c in enumerate(row))
            body.append(f"<tr>{cells}</tr>")
        body.append("</table>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>graphc inspect: {esc(str(compiled.source))}</title><style>{_CSS}</style></head>\n"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def cmd_inspect(args: argparse.Namespace) -> int:
    compiled = obtain(args.model, args.target, passes=args.passes, cache=args.cache, precision=args.precision)
    tables = model_tables(compiled, with_nodes=args.nodes)
    if args.json:
        print(json.dumps(compiled.report(), indent=2, default=str))
    else:
        print(render_text(tables), end="")
    if args.html:
        page = render_html(compiled, model_tables(compiled, with_nodes=True))
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as exc:
            raise OptionError(f"--html {args.html!r}: cannot write the file: {exc.strerror or exc}") from None
        _note(f"wrote {args.html}")
    return 0


# ============================================================================================ plan


def _add_plan(sub, common) -> None:
    p = sub.add_parser("plan", parents=[common], help="predict latency, throughput and memory on N devices",
                       description="Partition MODEL over DEVICES with the cost model (no device is needed: "
                                   "nothing runs) and print the predicted bottleneck, latency, throughput and "
                                   "per-device memory.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file or zoo:NAME")
    p.add_argument("--devices", metavar="D", required=True,
                   help="devices: a list (cpu:0,cpu:1, cuda:0-7), a preset (h100x8, h100x64, a100, host-cpu) "
                        "or a .json/.toml spec file")
    p.add_argument("--batch", type=_positive, default=None, metavar="B",
                   help="samples per request (default: a steady stream of batches)")
    p.add_argument("--stages", type=_positive, default=None, metavar="S", help="force S pipeline stages")
    p.add_argument("--replicas", type=_positive, default=None, metavar="R", help="force R data-parallel replicas")
    p.add_argument("--memory", type=_positive, default=None, metavar="BYTES", help="memory cap per device")
    p.add_argument("--calibrate", action="store_true", help=CALIBRATE_HELP)
    p.add_argument("--json", action="store_true", help="print report()['partition'] as JSON")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    import graphc

    options = {k: v for k, v in (("partition_batch", args.batch), ("partition_stages", args.stages),
                                 ("partition_replicas", args.replicas), ("partition_memory_bytes", args.memory),
                                 ("partition_calibration", "measure" if args.calibrate else None))
               if v is not None}
    # the reference target plans for any device kind; the simulator never starts a worker
    compiled = graphc.compile(args.model, target="reference", devices=args.devices, **options)
    partition = compiled.report().get("partition")
    if partition is None:
        raise OptionError(f"--devices {args.devices!r} names one device; give two or more to plan a partition")
    if args.json:
        print(json.dumps(partition, indent=2, default=str))
        return 0
    samples = partition["predicted_samples_per_s"]
    rows = [["devices", f"{len(partition['devices'])} used of {len(partition['devices']) + len(partition['unused_devices'])} "
                        f"({partition.get('device_spec') or args.devices})"],
            ["configuration", f"{partition['replicas']} replica(s) x {partition['stages']} stage(s)"
                              + (f", micro-batch {partition['micro_batch']}" if partition.get("micro_batch") else "")],
            ["bottleneck", f"{1e3 * partition['bottleneck_s']:.4f} ms ({partition['bottleneck_vs_lower_bound']:.3f} x "
                           f"the lower bound {1e3 * partition['lower_bound_s']:.4f} ms)"],
            ["predicted latency", f"{1e3 * partition['predicted_latency_s']:.4f} ms per micro-batch"],
            ["predicted throughput", f"{partition['predicted_throughput']:.2f} micro-batches/s "
                                     f"({samples:.2f} samples/s)"],
            ["cut tensors", f"{len(partition['cut_tensors'])} "
                            f"({human_bytes(sum(c['bytes'] for c in partition['cut_tensors']))} per micro-batch)"]]
    peak = max(partition["devices"], key=lambda d: d["peak_bytes"])
    rows.append(["largest device memory", f"{human_bytes(peak['peak_bytes'])} of {human_bytes(peak['capacity_bytes'])} "
                                          f"({peak['device']})"])
    tables = [Table(f"Plan for {compiled.source}", ["", ""], rows), partition_table(partition),
              Table("Why", [""], [[r] for r in partition.get("reasons", [])])]
    print(render_text(tables), end="")
    return 0


# ============================================================================================ bench


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, format_table

    result = bench(args.model, vs=args.vs, threads=args.threads, repeat=args.repeat, warmup=args.warmup,
                   batch=args.batch, target=args.target, weights=args.weights, passes=args.passes,
                   precision=args.precision)
    print(format_table(result))
    if result.ort is not None and not result.agree:
        _note(f"warning: graphc and onnxruntime outputs differ ({', '.join(result.mismatched)})")
    if args.profile:
        from .profile import profile

        if result.compiled is None:
            raise OptionError("--profile: the benchmark kept no compiled model")
        print()
        print(profile(result.compiled, repeat=max(3, min(args.repeat, 20)), seed=0).format(top=20))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
