"""The ``hnnx`` command line. Each command parses its options, calls the library and prints.

Errors in the user's input print one line ``hnnx: error: ...`` on stderr and exit with 2.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from hnnx.errors import HnnxError

EXIT_BAD_INPUT = 2


def _reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn HnnxError into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except HnnxError as exc:
            click.echo(f"hnnx: error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hnnx")
def main() -> None:
    """hnnx — hybrid ANN/SNN networks as ONNX graphs."""
    _warnings_on_one_line()


def _warnings_on_one_line() -> None:
    """Show hnnx's own warnings (e.g. the native-kernel fallback) as ``hnnx: warning: …``."""
    import warnings

    from hnnx.runtime.native import NativeKernelWarning
    from hnnx.runtime.parallel import WorkerWarning

    shown = warnings.showwarning
    if getattr(shown, "hnnx_one_line", False):  # installed by an earlier invocation in this process
        return

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, (NativeKernelWarning, WorkerWarning)):
            click.echo(f"hnnx: warning: {str(message).removeprefix('hnnx: ')}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    show.hnnx_one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = show


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@_reports_errors
def inspect(model: Path) -> None:
    """Show MODEL's inputs and outputs, op histogram and hnnx nodes."""
    import onnx

    import hnnx
    from hnnx import ops
    from hnnx.runtime.data import spec_of

    proto = hnnx.load(model)
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    click.echo(f"model: {model}  (IR {proto.ir_version}, opsets: "
               + ", ".join(f"{op.domain or 'ai.onnx'} {op.version}" for op in proto.opset_import) + ")")
    click.echo("inputs:")
    for vi in graph.input:
        if vi.name not in initializers:
            click.echo(f"  {spec_of(vi).describe()}")
    click.echo("outputs:")
    for vi in graph.output:
        click.echo(f"  {spec_of(vi).describe()}")
    parameters = sum(int(onnx.numpy_helper.to_array(init).size) for init in graph.initializer)
    click.echo(f"parameters: {parameters:,} in {len(initializers)} initializers")
    histogram = collections.Counter(
        f"{node.domain}.{node.op_type}" if node.domain else node.op_type for node in graph.node
    )
    click.echo("ops:")
    for op_type, count in sorted(histogram.items(), key=lambda item: (-item[1], item[0])):
        click.echo(f"  {count:5d}  {op_type}")
    hnnx_nodes = list(ops.hnnx_nodes(graph))
    click.echo(f"hnnx nodes: {len(hnnx_nodes)}")
    for node in hnnx_nodes:
        view = ops.declaration(node.op_type).view(node)
        click.echo(f"  {view.name}  ({node.op_type}, body {node.overload})")
        click.echo(f"    inputs:  {', '.join(name or '-' for name in node.input)}")
        click.echo(f"    outputs: {', '.join(name or '-' for name in node.output)}")
        for key, value in view.attrs.items():
            if isinstance(value, onnx.GraphProto):  # a custom neuron's step: its ops in order
                value = f"graph of {len(value.node)} nodes: " + ", ".join(n.op_type for n in value.node)
            if value is not None:
                click.echo(f"    {key} = {value}")


class ByteSize(click.ParamType):
    """A number of bytes: ``1000000``, ``512M``, ``4G``, ``1.5GiB`` (K, M, G, T: powers of 1024)."""

    name = "size"
    _UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        scale = self._UNITS.get(text[-1:], 1)
        try:
            size = float(text[:-1] if text[-1:] in self._UNITS else text) * scale
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 4G, 512M, 1000000)", param, ctx)
        if not size >= 1:
            self.fail(f"{value!r}: the size must be at least 1 byte", param, ctx)
        return int(size)


def _worker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--workers N`` and ``--ray [ADDRESS]``: shard the samples over local processes or a Ray cluster."""
    command = click.option(
        "--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
        help="Shard the samples over a Ray cluster: the one at ADDRESS, else a local one (needs "
             "pip install 'hnnx[ray]'). Results equal one process's bit for bit.")(command)
    return click.option(
        "--workers", type=click.IntRange(min=1), default=None, metavar="N",
        help="Shard the samples over N local processes (with --ray: N Ray workers; default: the cluster's CPUs). "
             "Results equal one process's bit for bit.")(command)


class _RayAddressCommand(click.Command):
    """A command whose ``--ray`` takes an optional address: a path after ``--ray`` (the model, the
    data) is the command's argument, not an address."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        for index, arg in enumerate(args[:-1]):
            following = args[index + 1]
            if arg == "--ray" and (Path(following).exists() or following.endswith((".onnx", ".npz", ".npy"))):
                args[index] = "--ray="
        return super().parse_args(ctx, args)


def _ray_choice(address: str | None) -> bool | str | None:
    """``--ray``'s value as :func:`hnnx.simulate` takes it: None, True (no address) or the address."""
    if address is None:
        return None
    return address or True


def _plot_option(text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--plot", "plot_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
                        help=text + " Needs matplotlib (pip install 'hnnx[plot]').")


def _echo_written(paths: list[Path]) -> None:
    for path in paths:
        click.echo(f"wrote {path}")


@main.command(cls=_RayAddressCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "-i", "data", required=True, type=click.Path(path_type=Path),
              help="Data: .npz keyed by input names (optional 'labels'), .npy, or a directory of them.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Labels .npy (default: the 'labels' array of the data, if any).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True,
              help="Samples per onnxruntime run.")
@click.option("--probe", "probes", multiple=True, metavar="TENSOR",
              help="Record an intermediate tensor (repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write outputs and probes to this .npz file.")
@click.option("--chunk", "chunk_steps", type=click.IntRange(min=0), default=None, metavar="K",
              help="Run the time steps K at a time with every layer's state carried (results bit-identical; "
                   "0: all at once). Default: chunks only when the whole sequence would not fit --memory-limit.")
@click.option("--memory-limit", type=ByteSize(), default=None, metavar="SIZE",
              help="Memory budget that chooses the chunk length, e.g. 4G or 512M (default: half the available "
                   "memory).")
@click.option("--event-driven", "event_driven", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True,
              help="Spike-input layers on the event-driven native kernels: auto: integer layers whose firing rate "
                   "pays (measured on the first batch), on: every one, float layers too (their sums change order), "
                   "off: none. auto and on also run integer layers as exact float layers.")
@click.option("--event-float", "event_float", is_flag=True,
              help="With --event-driven auto, decide float spike-input layers by their firing rate too (their sums "
                   "change order: outputs differ from the dense layers by rounding).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@_worker_options
@_plot_option("Write PNG plots into DIR: a spike raster of every probed spike tensor (without --probe: of every "
              "spiking layer), firing-rate histograms and, with labels, the confusion matrix.")
@_reports_errors
def simulate(model: Path, data: Path, labels: Path | None, batch_size: int, probes: tuple[str, ...],
             threads: int | None, output: Path | None, chunk_steps: int | None, memory_limit: int | None,
             progress: bool, workers: int | None, ray_address: str | None, plot_dir: Path | None,
             event_driven: str = "auto", event_float: bool = False) -> None:
    """Run MODEL (an .onnx file, or a chip program directory written by `hnnx lower`) on a
    dataset: accuracy, firing rates, probes."""
    import hnnx

    if output is not None and output.suffix != ".npz":
        raise HnnxError(f"{output}: the output file must end in .npz")
    ray = _ray_choice(ray_address)
    if plot_dir is not None:
        from hnnx.plot import pyplot

        pyplot()  # no matplotlib: say so before the run, not after
    if model.is_dir():  # a chip program: the chip simulator runs it
        if workers is not None or ray:
            raise HnnxError(f"{model}: a chip program runs on the chip simulator in one process (no --workers/--ray)")
        result = hnnx.chip.simulate(model, data, labels=labels, probes=probes)
    else:
        proto: Any = model
        if plot_dir is not None and not probes:  # the rasters of every spiking layer
            from hnnx.runtime.session import spiking_neurons

            proto = hnnx.load(model)
            probes = tuple(node.output[0] for node in spiking_neurons(proto.graph))
        result = hnnx.simulate(proto, data, labels=labels, batch_size=batch_size, probes=probes,
                               threads=threads, progress=progress and sys.stderr.isatty(), chunk_steps=chunk_steps,
                               memory_limit=memory_limit, workers=workers, ray=ray, event_driven=event_driven,
                               event_float=event_float)
    click.echo(result.summary())
    if output is not None:
        result.save(output)
        click.echo(f"wrote {output}")
    if plot_dir is not None:
        from hnnx.plot import simulation_plots

        _echo_written(simulation_plots(result, plot_dir))


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--output", "-o", "plot_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Directory for the PNG files (default: RUN's name without .npz, plus _plots).")
@_reports_errors
def plot(run: Path, plot_dir: Path | None) -> None:
    """Draw the spike rasters and firing-rate histograms of a run saved by `hnnx simulate -o RUN.npz`."""
    from hnnx.plot import pyplot, run_plots

    pyplot()
    _echo_written(run_plots(run, plot_dir if plot_dir is not None else run.with_name(f"{run.stem}_plots")))


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("hnnx-demo"), show_default=True,
              help="Directory for the model and the test data.")
@_reports_errors
def demo(out_dir: Path) -> None:
    """Simulate the bundled hybrid ANN→SNN network on the digits test split."""
    from hnnx.demo import run_demo

    click.echo(_native_setup_line())
    click.echo("hybrid network: ANN conv front → A2S rate coding (16 steps) → spiking MLP → firing-rate readout")
    model_path, data_path, result = run_demo(out_dir, progress=sys.stderr.isatty())
    click.echo(f"wrote {model_path} and {data_path}")
    click.echo(result.summary())
    click.echo(f"next: hnnx inspect {model_path}")
    click.echo(f"      hnnx simulate {model_path} --input {data_path} --probe hidden_lif.spikes")
    click.echo(f"      hnnx lower {model_path} --chip tianjicx --calib {data_path} -o {out_dir / 'program'} "
               f"--verify {data_path}")


def _native_setup_line() -> str:
    """Set up the native LIF kernel (the demo ends the documented install) and say which path runs."""
    from hnnx.runtime import native

    current = native.setup()
    if current.active:
        return f"LIF kernel: native (fused C++ onnxruntime custom op, {current.library})"
    native.mark_reported()
    return f"LIF kernel: ONNX function bodies — native kernel unavailable: {current.reason}"


@main.command()
@click.option("--build", is_flag=True,
              help="Fetch the onnxruntime headers if missing (from the Debian mirror) and build the native kernels, "
                   "retrying earlier failures.")
@click.option("--require-native", is_flag=True, help="Exit with code 1 unless the native kernels are active.")
def doctor(build: bool, require_native: bool) -> None:
    """Say which kernel path hnnx.LIF runs on (native or function bodies) and why."""
    import platform

    import numpy
    import onnx
    import onnxruntime

    import hnnx
    from hnnx.runtime import native

    click.echo(f"hnnx {hnnx.__version__}, python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
               f"onnx {onnx.__version__}, numpy {numpy.__version__}, {platform.machine()}, {os.cpu_count()} CPUs")
    current = native.setup(force=True) if build else native.status()
    for line in native.describe(current):
        click.echo(line)
    if require_native and not current.active:
        sys.exit(1)


@main.command(cls=_RayAddressCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="The quantized .onnx file (default: MODEL.<target>[.fakequant].onnx next to MODEL).")
@click.option("--calib", "calibration", default=None, type=click.Path(path_type=Path),
              help="Calibration data: .npz keyed by input names, .npy, or a directory of them.")
@click.option("--target", type=click.Choice(["tianjicx", "qdq"]), default="tianjicx", show_default=True,
              help="tianjicx: the chip's shift-only scheme for ANN, SNN and hybrid parts; qdq: standard ONNX "
                   "INT8 QuantizeLinear/DequantizeLinear for the ANN parts (spiking parts: see --spiking).")
@click.option("--format", "output_format", type=click.Choice(["int", "fakequant"]), default=None,
              help="tianjicx: int (default; int8 weights, int32 accumulators, integer neurons) or fakequant "
                   "(the float QAT-ready graph, equal to the integer graph up to the output scale); "
                   "qdq: fakequant.")
@click.option("--per-channel/--per-tensor", default=None,
              help="qdq weight scales per output channel (default) or per tensor.")
@click.option("--spiking", type=click.Choice(["tianjicx", "float"]), default="tianjicx", show_default=True,
              help="qdq target: quantize the spiking parts as tianjicx, or leave them float.")
@click.option("--reduce-range/--full-range", default=None,
              help="qdq weights in 7 bits, which onnxruntime's int8 kernels on x86 CPUs without VNNI sum without "
                   "saturating, or in 8 (default: 7 on such a CPU, else 8).")
@click.option("--observer", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default="minmax",
              show_default=True, help="How activation ranges are chosen from the calibration data.")
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=None,
              help="--observer percentile: the percentile of |x| taken as the range (default 99.99).")
@click.option("--num-samples", type=click.IntRange(min=1), default=None, help="Calibration samples to use (all).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True,
              help="Calibration samples per onnxruntime run.")
@click.option("--exclude", multiple=True, metavar="NAME|OP|REGEX", help="Keep matching nodes in float (repeatable).")
@click.option("--bit-shift-unit", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="Requantization shifts and weight exponents are multiples of this (TianjicX: 2).")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON (and Markdown next to it, .md).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@_worker_options
@_plot_option("Write PNG plots into DIR: SQNR and saturation of every quantized tensor and, for spiking models, "
              "float-vs-quantized firing rates.")
@_reports_errors
def quantize(model: Path, output: Path | None, calibration: Path | None, target: str, output_format: str | None,
             per_channel: bool | None, spiking: str, reduce_range: bool | None, observer: str, percentile: float | None, num_samples: int | None, batch_size: int, exclude: tuple[str, ...], bit_shift_unit: str,
             report: Path | None, progress: bool, workers: int | None, ray_address: str | None,
             plot_dir: Path | None) -> None:
    """Calibrate MODEL on data and write its quantized form."""
    import hnnx
    from hnnx.quantization import quantize as run_quantize

    ray = _ray_choice(ray_address)
    if plot_dir is not None:
        from hnnx.plot import pyplot

        pyplot()  # no matplotlib: say so before the run, not after
    proto = hnnx.load(model)
    if output is None:
        output = _default_quantized_path(model, target, output_format)
    if calibration is None:
        _require_calibration(proto, target, output_format)
    if output.suffix != ".onnx":
        raise HnnxError(f"{output}: the output file must end in .onnx")
    if report is not None and report.suffix != ".json":
        raise HnnxError(f"{report}: the report file must end in .json")
    if percentile is not None and observer != "percentile":
        raise HnnxError(f"--percentile is an option of --observer percentile, not of {observer}")
    quantized, result = run_quantize(proto, calibration, target=target, format=output_format,
                                     per_channel=per_channel, spiking=spiking, reduce_range=reduce_range,
                                     observer=observer,
                                     observer_options=None if percentile is None else {"percentile": percentile},
                                     num_samples=num_samples, batch_size=batch_size, exclude=exclude,
                                     bit_shift_unit=int(bit_shift_unit), progress=progress and sys.stderr.isatty(),
                                     workers=workers, ray=ray)
    for name, reason in result.excluded.items():
        click.echo(f"hnnx: warning: {name} stays in float: {reason}", err=True)
    hnnx.save(quantized, output)
    _print_and_write_report(result, output, report)
    if plot_dir is not None:
        from hnnx.plot import quantization_plots

        _echo_written(quantization_plots(result, plot_dir))


def _default_quantized_path(model: Path, target: str, output_format: str | None) -> Path:
    """``MODEL.<target>[.fakequant].onnx`` next to MODEL (``.fakequant`` for that format of a target
    that has another; an earlier form's marker in MODEL's name is replaced); never MODEL itself."""
    from hnnx.quantization.api import FORMATS

    form = output_format or FORMATS[target][0]
    marker = f".{target}" + (f".{form}" if form != FORMATS[target][0] else "")
    base = model.name.removesuffix(".onnx")
    for name, formats in FORMATS.items():
        for suffix in [f".{name}.{other}" for other in formats] + [f".{name}"]:
            if base.endswith(suffix):
                base = base.removesuffix(suffix)
                break
        else:
            continue
        break
    path = model.with_name(base + marker + ".onnx")
    if path.resolve() == model.resolve():
        raise HnnxError(f"{model}: the default output would overwrite the model (already {marker[1:]}); "
                        f"give -o OUT.onnx")
    return path


def _require_calibration(model: Any, target: str, output_format: str | None) -> None:
    """HnnxError saying which data calibration needs, unless quantizing ``model`` needs none (it is
    already in the asked form, or a tianjicx fake-quant model made integer)."""
    from hnnx.quantization.api import FORMATS, quantized_as
    from hnnx.runtime.data import graph_inputs

    form = f"{target}/{output_format or FORMATS[target][0]}"
    done = quantized_as(model)
    if done == form or (done, form) == ("tianjicx/fakequant", "tianjicx/int"):
        return
    inputs = graph_inputs(model)
    described = ", ".join(spec.describe() + (" (time-major: samples on axis 1)" if spec.batch_axis == 1 else "")
                          for spec in inputs)
    files = "a .npz keyed by input name" + (", a .npy" if len(inputs) == 1 else "") + " or a directory of them"
    raise HnnxError(f"quantizing needs calibration data: --calib DATA, {files}, holding the model's inputs "
                    f"{described} (samples on the N axis; a few hundred are typical)")


def _print_and_write_report(result: Any, output: Path, report: Path | None) -> None:
    """Print a report (its ``markdown()``), say ``output`` was written, and write the report as
    JSON (``to_json()``) and Markdown next to it (``.md``) when ``report`` is given."""
    from hnnx.model import write_atomic

    click.echo(result.markdown(), nl=False)
    click.echo(f"wrote {output}")
    if report is not None:
        write_atomic(report, result.to_json().encode())
        write_atomic(report.with_suffix(".md"), result.markdown().encode())
        click.echo(f"wrote {report} and {report.with_suffix('.md')}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="Training data: .npz keyed by input names with 'labels', .npy, or a directory of them.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Labels .npy (default: the 'labels' array of the data).")
@click.option("--loss", type=click.Choice(["ce", "distill"]), default="ce", show_default=True,
              help="ce: cross-entropy on the labels; distill: KL divergence to the --teacher's outputs.")
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="The float model whose outputs --loss distill matches.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Softening of the distillation targets.")
@click.option("--epochs", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam's step relative to each layer's weight magnitude (cosine decay).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--val", "validation", type=click.Path(path_type=Path), default=None,
              help="Validation data with labels (default: --val-fraction of --data, held out).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="The fine-tuned .onnx file (the same graph with the best epoch's weights), written "
                   "whenever an epoch beats the best so far.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@_reports_errors
def finetune(model: Path, data: Path, labels: Path | None, loss: str, teacher: Path | None, temperature: float,
             epochs: int, lr: float, batch_size: int, validation: Path | None, val_fraction: float, seed: int,
             output: Path, progress: bool) -> None:
    """Fine-tune MODEL (a float or tianjicx fake-quant graph) in torch; write the best epoch's weights."""
    import hnnx
    from hnnx.qat import finetune as run_finetune
    from hnnx.quantization import is_fakequant

    if output.suffix != ".onnx":
        raise HnnxError(f"{output}: the output file must end in .onnx")
    result = run_finetune(model, data, labels=labels, loss=loss, teacher=teacher, temperature=temperature,
                          epochs=epochs, lr=lr, batch_size=batch_size, validation=validation,
                          validation_fraction=val_fraction, seed=seed, progress=progress and sys.stderr.isatty(),
                          log=click.echo, checkpoint=output)
    click.echo(result.summary())
    hnnx.save(result.model, output)
    click.echo(f"wrote {output}")
    if is_fakequant(result.model):
        click.echo(f"next: hnnx quantize {output} --format int --calib {data} -o {output.with_suffix('')}_int.onnx")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["snn"]), default="snn", show_default=True,
              help="snn: ReLU layers become integrate-and-fire neurons (rate coding).")
@click.option("--calib", "calibration", required=True, type=click.Path(path_type=Path),
              help="Calibration data for the layer ranges: .npz keyed by input names, .npy, or a directory.")
@click.option("--steps", "-T", type=click.IntRange(min=1), required=True, help="Time steps of the SNN.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="The converted .onnx file.")
@click.option("--hybridize", is_flag=True, help="Keep the layers before --cut as ANN (needs --cut).")
@click.option("--cut", default=None, metavar="NODE", help="With --hybridize: the first layer of the SNN part.")
@click.option("--coding", type=click.Choice(["direct", "rate"]), default="direct", show_default=True,
              help="Input coder at the cut: the value every step, or Bernoulli spikes.")
@click.option("--observer", type=click.Choice(["max", "percentile"]), default="percentile", show_default=True,
              help="Each ReLU's range: its maximum, or a percentile of |a| (--percentile).")
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.99, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Membrane leak: 1 = IF neurons, < 1 = LIF.")
@click.option("--v-init", type=float, default=0.5, show_default=True, help="Initial membrane, in thresholds.")
@click.option("--num-samples", type=click.IntRange(min=1), default=None, help="Calibration samples to use (all).")
@click.option("--eval", "evaluation", type=click.Path(path_type=Path), default=None,
              help="Labelled data: print the ANN's and the SNN's accuracy against T.")
@click.option("--curve", default=None, metavar="T1,T2,...",
              help="The T values of --eval (default: powers of two up to --steps, and --steps).")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="With --eval: write the accuracy-vs-T curve as a PNG (needs matplotlib).")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON (and Markdown next to it, .md).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@_reports_errors
def convert(model: Path, target: str, calibration: Path, steps: int, output: Path, hybridize: bool, cut: str | None,
            coding: str, observer: str, percentile: float, alpha: float, v_init: float, num_samples: int | None,
            evaluation: Path | None, curve: str | None, plot: Path | None, report: Path | None,
            progress: bool) -> None:
    """Convert a float ReLU MODEL into an SNN (or, with --hybridize --cut, an ANN/SNN hybrid)."""
    import hnnx
    from hnnx.convert import Converter, NeuronChoice, plot_curve, print_curve

    if output.suffix != ".onnx":
        raise HnnxError(f"{output}: the output file must end in .onnx")
    if report is not None and report.suffix != ".json":
        raise HnnxError(f"{report}: the report file must end in .json")
    if plot is not None and (plot.suffix != ".png" or evaluation is None):
        raise HnnxError(f"{plot}: --plot writes a .png file of the --eval curve")
    if hybridize != (cut is not None):
        raise HnnxError("--hybridize and --cut NODE go together (the layer where the SNN part starts)")
    points = _steps_list(curve, steps)
    converter = Converter(model, calibration, cut=cut, coding=coding, observer=observer, percentile=percentile,
                          neuron=NeuronChoice(alpha=alpha, v_init=v_init), num_samples=num_samples,
                          progress=progress and sys.stderr.isatty())
    converted = converter.build(steps)
    result = converter.report(steps)
    if evaluation is not None:
        result.ann_accuracy, result.curve = converter.curve(evaluation, points)
        click.echo(print_curve(result.ann_accuracy, result.curve), nl=False)
    hnnx.save(converted, output)
    _print_and_write_report(result, output, report)
    if plot is not None:
        try:
            plot_curve(result.ann_accuracy, result.curve, plot)
            click.echo(f"wrote {plot}")
        except HnnxError as exc:
            click.echo(f"hnnx: warning: {exc}", err=True)


def _steps_list(text: str | None, steps: int) -> list[int]:
    """The T values of an accuracy curve: ``"4,8,16"``, or powers of two up to ``steps`` and ``steps``."""
    if text is None:
        return sorted({2**k for k in range(steps.bit_length()) if 2**k <= steps} | {steps})
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise HnnxError(f"--curve {text!r}: give comma-separated numbers of steps, e.g. 4,8,16,32") from None
    if not values or values[0] < 1:
        raise HnnxError(f"--curve {text!r}: every number of steps must be ≥ 1")
    return values


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--chip", "chip", default="tianjicx", show_default=True, metavar="tianjicx|tianjic|FILE.json",
              help="The target chip: a built-in spec or a spec file (schema: hnnx.chip.spec).")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="The program directory to write (program.json + weights.npz).")
@click.option("--calib", "calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration data: quantizes a float MODEL first, and gives the spike rates for placement "
                   "and the report (else traffic is dense).")
@click.option("--verify", "verify_data", type=click.Path(path_type=Path), default=None,
              help="Run the chip simulator and the integer graph on this data; fail on the first differing tensor.")
@click.option("--chips", type=click.IntRange(min=1), default=1, show_default=True,
              help="Spread the model over this many chips side by side.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON (and Markdown next to it, .md).")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Write the placement picture (PNG; needs matplotlib).")
@_reports_errors
def lower(model: Path, chip: str, output: Path, calibration: Path | None, verify_data: Path | None, chips: int,
          report: Path | None, plot: Path | None) -> None:
    """Map an integer MODEL onto a many-core chip and write the program to PROGRAM_DIR (-o)."""
    from hnnx import chip as chips_pkg

    if report is not None and report.suffix != ".json":
        raise HnnxError(f"{report}: the report file must end in .json")
    if plot is not None and plot.suffix != ".png":
        raise HnnxError(f"{plot}: the plot file must end in .png")
    integer = chips_pkg.integer_model(model, calibration)
    program = chips_pkg.lower(integer, chip, calibration=calibration, chips=chips)
    if verify_data is not None:
        compared = chips_pkg.verify(integer, program, verify_data)
        click.echo(f"verified: the chip program equals the integer graph bit for bit ({len(compared)} tensors: "
                   f"{', '.join(compared)})")
    program.save(output)
    result = chips_pkg.chip_report(program)
    _print_and_write_report(result, output, report)
    if plot is not None:
        try:
            chips_pkg.plot_placement(program, str(plot))
            click.echo(f"wrote {plot}")
        except HnnxError as exc:
            click.echo(f"hnnx: warning: {exc}", err=True)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(["bimap"]), required=True,
              help="bimap: the ONNX dialect of BiMap, the TianjicX compiler (one time step, opset 9, snn ops), "
                   "from a tianjicx integer MODEL.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="The exported .onnx file.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the report (what the host feeds and reads per step) as JSON, and Markdown next to it (.md).")
@_reports_errors
def export(model: Path, export_format: str, output: Path, report: Path | None) -> None:
    """Export a quantized MODEL to another toolchain's format."""
    import hnnx
    from hnnx.interop import export_bimap, write_bimap

    if output.suffix != ".onnx":
        raise HnnxError(f"{output}: the output file must end in .onnx")
    if report is not None and report.suffix != ".json":
        raise HnnxError(f"{report}: the report file must end in .json")
    exported, result = export_bimap(hnnx.load(model))
    write_bimap(exported, output)
    _print_and_write_report(result, output, report)


@main.group()
def nir() -> None:
    """Import and export NIR graphs (neuroir.org): snnTorch, Norse, Sinabs, Rockpool, Lava-dl, Spyx."""


@nir.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="The .onnx file to write.")
@click.option("--dt", type=float, required=True,
              help="The time step, in the unit of the file's time constants (snnTorch and the NIR paper: seconds, "
                   "dt 1e-4; Sinabs: steps, dt 1).")
@click.option("--scheme", type=click.Choice(["euler", "exp"]), default="euler", show_default=True,
              help="euler: forward Euler (snnTorch, Norse); exp: exponential Euler.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the import report as JSON, and Markdown next to it (.md).")
@_reports_errors
def nir_import(source: Path, output: Path, dt: float, scheme: str, report: Path | None) -> None:
    """Import the NIR graph SOURCE as an hnnx model; prints what was mapped exactly and what was approximated."""
    import hnnx
    from hnnx.frontends.nir import import_nir

    _check_suffixes(output, ".onnx", report)
    model, result = import_nir(source, dt, scheme)
    hnnx.save(model, output)
    _print_and_write_report(result, output, report)


@nir.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="The .nir file to write.")
@click.option("--dt", type=float, default=1e-4, show_default=True,
              help="The time step NIR's time constants are written for (snnTorch's and the NIR paper's 1e-4 s).")
@click.option("--scheme", type=click.Choice(["euler", "exp"]), default="euler", show_default=True,
              help="The discretisation the time constants invert.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write the node mapping as JSON, and Markdown next to it (.md).")
@_reports_errors
def nir_export(model: Path, output: Path, dt: float, scheme: str, report: Path | None) -> None:
    """Export the float hnnx MODEL as a NIR graph; stops at the first node NIR cannot express."""
    from hnnx.interop.nir import export_nir

    _check_suffixes(output, ".nir", report)
    result = export_nir(model, output, dt, scheme)
    _print_and_write_report(result, output, report)


def _check_suffixes(output: Path, suffix: str, report: Path | None) -> None:
    """HnnxError unless ``output`` ends in ``suffix`` and ``report`` (if given) in ``.json``."""
    if output.suffix != suffix:
        raise HnnxError(f"{output}: the output file must end in {suffix}")
    if report is not None and report.suffix != ".json":
        raise HnnxError(f"{report}: the report file must end in .json")


if __name__ == "__main__":
    main()
