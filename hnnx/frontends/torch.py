"""PyTorch front end: modules for the hnnx ops that train in torch and export to ONNX.

Each module runs its op's torch implementation (the declaration's ``torch_forward``:
the op's own equations with surrogate gradients) in eager mode, and becomes one ``hnnx``
node when exported with :func:`export` (``torch.onnx.export(..., dynamo=True)``). The
exported file carries the function bodies, so onnxruntime runs it as is, and the hnnx
nodes give the same outputs as the torch forward for the same inputs.

    >>> import torch, hnnx.frontends.torch as hnn
    >>> net = torch.nn.Sequential(hnn.TimeFold(torch.nn.Linear(64, 10)), hnn.LIF(threshold=1.0, alpha=0.9))
    >>> model = hnn.export(net, (torch.rand(8, 4, 64),), "snn.onnx", time_major_inputs=[0])
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, ClassVar, Iterator, Sequence

import onnx
import torch
from torch import nn

from hnnx import ops
from hnnx.errors import HnnxError
from hnnx.ops.declare import OpDeclaration

NAME_KEY = "hnnx.name"
_DTYPES = {"tensor(int32)": torch.int32, "tensor(float)": torch.float32, "tensor(int8)": torch.int8,
           "tensor(int64)": torch.int64}


def call_op(decl: type[OpDeclaration], inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any],
            n_outputs: int = 1, name: str = "") -> tuple[torch.Tensor, ...]:
    """Run hnnx op ``decl`` on tensors: eagerly with autograd, or as one ONNX node under export.

    ``inputs`` follow the op's ports (None = absent optional input); ``attrs`` are its
    attributes; ``name`` becomes the exported node's name.
    """
    given = list(inputs)
    while given and given[-1] is None:
        given.pop()
    view = decl.view_for(attrs, [x is not None for x in given], n_outputs, name)
    if not torch.onnx.is_in_onnx_export():
        return decl.torch_forward(view, *given)
    shapes = decl.output_shapes(view, [None if x is None else list(x.shape) for x in given])
    dtypes = [_DTYPES.get(t, t) for t in decl.output_elem_types(view, [x.dtype if x is not None else None
                                                                     for x in given])]
    written = {key: value for key, value in view.attrs.items() if value is not None}
    meta = {NAME_KEY: name} if name else None
    symbol = f"{ops.DOMAIN}::{decl.name}"
    if n_outputs == 1:
        return (torch.onnx.ops.symbolic(symbol, given, written, dtype=dtypes[0], shape=shapes[0],
                                        version=ops.OPSET_VERSION, metadata_props=meta),)
    return tuple(torch.onnx.ops.symbolic_multi_out(symbol, given, written, dtypes=dtypes, shapes=shapes,
                                                   version=ops.OPSET_VERSION, metadata_props=meta))


class HnnxModule(nn.Module):
    """Base of the op modules: holds validated attributes and the exported node's name."""

    op: ClassVar[type[OpDeclaration]]

    def __init__(self, **attrs: Any) -> None:
        super().__init__()
        self.op.resolve(attrs, type(self).__name__)  # fail at construction, not at first forward
        self.attrs = attrs
        self.node_name = ""

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.attrs.items())

    def _call(self, inputs: Sequence[torch.Tensor | None], n_outputs: int = 1) -> tuple[torch.Tensor, ...]:
        return call_op(self.op, inputs, self.attrs, n_outputs, self.node_name)


class LIF(HnnxModule):
    """A LIF layer over time axis 0: current ``[T, N, ...]`` → spikes ``[T, N, ...]``.

    Keyword arguments are the attributes of ``hnnx.LIF`` (threshold, reset_mode, v_reset,
    reset_decrement, v_init, alpha, beta, v_lower, refractory, theta_alpha, theta_beta,
    theta_increment, mode, state_bits, surrogate, surrogate_width); see docs/ops.md.
    ``outputs``: 1 returns the spikes; 2–4 return ``(spikes, v[, theta[, refractory]])``,
    the final states ``[N, ...]``, for streaming across calls.
    """

    op = ops.LIF

    def __init__(self, outputs: int = 1, recurrent_features: int | None = None, **attrs: Any) -> None:
        if not 1 <= outputs <= 4:
            raise HnnxError(f"LIF outputs must be 1–4, got {outputs}")
        super().__init__(**attrs)
        self.outputs = outputs
        self.recurrent_weight = _recurrent_parameter(recurrent_features)

    def forward(self, current: torch.Tensor, v0: torch.Tensor | None = None, theta0: torch.Tensor | None = None,
                refractory0: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        result = self._call([current, v0, theta0, refractory0, None, self.recurrent_weight], self.outputs)
        return result[0] if self.outputs == 1 else result


def _recurrent_parameter(features: int | None) -> nn.Parameter | None:
    """``recurrent_features = F``: a learnable recurrent weight ``[F, F]`` (rows: presynaptic
    neurons), starting at 0 — the layer starts feed-forward (the ops' ``recurrent_weight``)."""
    if features is None:
        return None
    if features < 1:
        raise HnnxError(f"recurrent_features must be ≥ 1, got {features}")
    return nn.Parameter(torch.zeros(features, features))


class IF(LIF):
    """Integrate-and-fire: a :class:`LIF` without leak (``alpha = 1``, ``beta = 0``)."""

    def __init__(self, outputs: int = 1, **attrs: Any) -> None:
        for leak in ("alpha", "beta"):
            if leak in attrs:
                raise HnnxError(f"IF has no leak: drop {leak!r} or use LIF")
        super().__init__(outputs=outputs, **attrs)


class CubaLIF(HnnxModule):
    """A current-based LIF layer (``hnnx.CubaLIF``): current ``[T, N, ...]`` → spikes ``[T, N, ...]``.

    Keyword arguments are the op's attributes (alpha_syn, alpha, beta, threshold, reset_mode,
    v_reset, v_init, i_init, ...); ``recurrent_features = F`` adds a learnable recurrent weight
    ``[F, F]`` (rows: presynaptic neurons; F = neurons per sample), starting at 0. ``outputs``: 1
    returns the spikes, 2–3 also the final ``v`` and ``i``.
    """

    op = ops.CubaLIF

    def __init__(self, outputs: int = 1, recurrent_features: int | None = None, **attrs: Any) -> None:
        if not 1 <= outputs <= 3:
            raise HnnxError(f"CubaLIF outputs must be 1–3, got {outputs}")
        super().__init__(**attrs)
        self.outputs = outputs
        self.recurrent_weight = _recurrent_parameter(recurrent_features)

    def forward(self, current: torch.Tensor, v0: torch.Tensor | None = None,
                i0: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        result = self._call([current, v0, i0, None, self.recurrent_weight], self.outputs)
        return result[0] if self.outputs == 1 else result


class LI(HnnxModule):
    """A leaky integrator (``hnnx.LI``, no spikes): current ``[T, N, ...]`` → membrane ``[T, N, ...]``,
    e.g. a readout; keyword arguments are its attributes (alpha, beta, v_init, ...)."""

    op = ops.LI

    def forward(self, current: torch.Tensor, v0: torch.Tensor | None = None) -> torch.Tensor:
        return self._call([current, v0])[0]


class Integrator(LI):
    """An integrator (``hnnx.Integrator``): current ``[T, N, ...]`` → its running sum ``[T, N, ...]``."""

    op = ops.Integrator


class Fire(HnnxModule):
    """Heaviside spikes ``1[v > threshold]`` with a surrogate gradient (``hnnx.Fire``)."""

    op = ops.Fire

    def forward(self, v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return self._call([v, threshold])[0]


class A2S(HnnxModule):
    """ANN→SNN Hybrid Unit ``[N, ...]`` → ``[T, N, ...]`` (``hnnx.A2S``).

    ``steps``: T; ``coding``: ``direct``, ``rate`` or ``learnable``. Learnable coding owns
    ``weight`` ``[T]`` (initialised to 1) and ``bias`` ``[T]`` (0): it starts as direct coding.
    Other keyword arguments are the op's attributes (normalize, seed, activation, converter, bits).
    """

    op = ops.A2S

    def __init__(self, steps: int, coding: str = "direct", **attrs: Any) -> None:
        super().__init__(steps=steps, coding=coding, **attrs)
        if coding == "learnable":
            self.weight = nn.Parameter(torch.ones(steps))
            self.bias = nn.Parameter(torch.zeros(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attrs["coding"] == "learnable":
            return self._call([x, self.weight, self.bias])[0]
        return self._call([x])[0]


class S2A(HnnxModule):
    """SNN→ANN Hybrid Unit ``[T, N, ...]`` → ``[T', N, ...]`` or ``[N, ...]`` (``hnnx.S2A``).

    ``decoding``: ``rate`` (window, kernel, stride), ``global`` or ``learnable``. Learnable decoding
    needs ``num_windows`` (= T / window; 1 shares one kernel across windows) and owns
    ``weight`` ``[num_windows, kernel]`` (initialised to 1/kernel: a rate) and ``bias``.
    """

    op = ops.S2A

    def __init__(self, decoding: str = "rate", num_windows: int | None = None, **attrs: Any) -> None:
        super().__init__(decoding=decoding, **attrs)
        if decoding == "learnable":
            if not num_windows or num_windows < 1:
                raise HnnxError("S2A decoding 'learnable' needs num_windows ≥ 1 (T / window, or 1 to share)")
            kernel = ops.S2A.geometry(ops.S2A.resolve(self.attrs, "S2A"))[1]
            self.weight = nn.Parameter(torch.full((num_windows, kernel), 1.0 / kernel))
            self.bias = nn.Parameter(torch.zeros(num_windows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attrs["decoding"] == "learnable":
            return self._call([x, self.weight, self.bias])[0]
        return self._call([x])[0]


class TimeFold(nn.Module):
    """Apply a stateless module to every time step at once: ``[T, N, ...]`` runs as ``[T·N, ...]``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, batch = x.shape[0], x.shape[1]
        y = self.module(x.reshape(steps * batch, *x.shape[2:]))
        return y.reshape(steps, batch, *y.shape[1:])


def _name_hnnx_outputs(graph: onnx.GraphProto) -> None:
    """Rename the tensors hnnx nodes produce to ``<node>.<port>`` (e.g. ``lif1.spikes``), so
    they are easy to probe; graph outputs keep the names the user chose."""
    keep = {output.name for output in graph.output}
    renames: dict[str, str] = {}
    for node in graph.node:
        if node.domain != ops.DOMAIN or not node.name:
            continue
        ports = ops.declaration(node.op_type).outputs
        for index, tensor in enumerate(node.output):
            if tensor and tensor not in keep:
                renames[tensor] = f"{node.name}.{ports[index].name}"
    if not renames:
        return
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress logs and warnings that concern torch, not the model."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export(model: nn.Module, example_inputs: Sequence[torch.Tensor], path: str | os.PathLike | None = None, *,
           input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
           time_major_inputs: Sequence[int] | None = None, dynamic: bool = True,
           fold_neurons: bool = True) -> onnx.ModelProto:
    """Export ``model`` to ONNX with one hnnx node per op module, functions attached.

    ``example_inputs``: positional tensors for ``forward`` (use at least 2 samples and 2 steps
    so those dims stay symbolic). Inputs laid out ``[T, N, ...]`` get the dim names ``T``/``N``,
    other inputs ``N`` on dim 0 (when ``dynamic``). Which inputs are time-major is found from the
    model — those that feed a time-major port of an hnnx module (LIF, IF, S2A, ...) or a
    ``TimeFold`` without an A2S in front; ``time_major_inputs`` (indices) states it instead, and
    HnnxError names an input it gets wrong. hnnx nodes are named by their module path. Writes
    ``path`` atomically when given; returns the model. The model is left in eval mode.
    ``fold_neurons``: custom neurons (:class:`Neuron`) whose step is an ``hnnx.LIF`` are exported
    as that LIF (the ``fold_neurons`` pass; the same bits, the LIF's kernel and lowering).
    """
    from hnnx.model import check, save

    for module_path, module in model.named_modules():
        if isinstance(module, HnnxModule):
            module.node_name = module_path or type(module).__name__
    model.eval()
    given = None if time_major_inputs is None else sorted(set(time_major_inputs))
    direct = _inputs_fed_to_time_layers(model, example_inputs)
    layout = given if given is not None else sorted(i for i, kind in direct.items() if kind[0] == ops.TIME_MAJOR)
    proto = _export_once(model, example_inputs, input_names, output_names, layout, dynamic)
    found = _time_layout_of_inputs(proto, len(example_inputs))
    found.update({i: kind for i, kind in direct.items() if i not in found})
    time_major = sorted(i for i, (kind, _) in found.items() if kind == ops.TIME_MAJOR)
    names = [vi.name for vi in proto.graph.input][: len(example_inputs)]
    for index in layout:
        if found.get(index, (None,))[0] == ops.NO_TIME:
            raise HnnxError(f"input {index} ({names[index]!r}) feeds {found[index][1]}, which takes [N, ...] values, "
                            f"not a time-major layer: drop it from time_major_inputs")
    missing = [i for i in time_major if i not in layout]
    if missing:
        index = missing[0]
        if given is not None or not dynamic:
            how = (f"add it to time_major_inputs (time_major_inputs={sorted(set(layout) | set(missing))})"
                   if dynamic else "export with dynamic=True so that its dims are named T and N")
            raise HnnxError(f"input {index} ({names[index]!r}) feeds the time-major layer {found[index][1]}: its dim 0 "
                            f"is time, not samples; {how}")
        layout = sorted(set(layout) | set(missing))
        proto = _export_once(model, example_inputs, input_names, output_names, layout, dynamic)
    if fold_neurons and any(node.op_type == "Neuron" and node.domain == ops.DOMAIN for node in proto.graph.node):
        from hnnx.passes import fold_neurons as fold, run_passes

        proto = run_passes(proto, [fold])
    if path is not None:
        save(proto, path)
    else:
        check(proto, "exported model")
    return proto


def _export_once(model: nn.Module, example_inputs: Sequence[torch.Tensor], input_names: Sequence[str] | None,
                 output_names: Sequence[str] | None, time_major: Sequence[int], dynamic: bool) -> onnx.ModelProto:
    """One run of the dynamo exporter, the hnnx nodes named and their functions attached."""
    from torch.export import Dim

    dynamic_shapes = None
    if dynamic:
        time, batch = Dim("T"), Dim("N")
        dynamic_shapes = tuple({0: time, 1: batch} if index in time_major else {0: batch}
                               for index in range(len(example_inputs)))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(model, tuple(example_inputs), dynamo=True,
                                        opset_version=ops.ONNX_OPSET,
                                        input_names=list(input_names) if input_names else None,
                                        output_names=list(output_names) if output_names else None,
                                        dynamic_shapes=dynamic_shapes, verbose=False)
    except Exception as exc:
        raise HnnxError(f"torch.onnx.export failed: {str(exc).strip().splitlines()[0]}") from exc
    proto = program.model_proto  # a new copy on each access: keep this one
    for node in proto.graph.node:
        meta = {prop.key: prop.value for prop in node.metadata_props}
        if node.domain == ops.DOMAIN and meta.get(NAME_KEY):
            node.name = meta[NAME_KEY]
        del node.metadata_props[:]  # the exporter's stack traces
    _name_hnnx_outputs(proto.graph)
    from hnnx.frontends.neuron import attach_steps  # custom neurons: each node gets its exported step graph

    attach_steps(proto, model)
    return ops.attach_functions(proto)


def _inputs_fed_to_time_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[int, tuple[str, str]]:
    """Example inputs that a ``TimeFold`` or an hnnx module receives as they are, with the time
    layout of the port (``TIME_MAJOR``/``NO_TIME``) and the module: one eager forward with hooks."""
    found: dict[int, tuple[str, str]] = {}
    by_id = {id(x): index for index, x in enumerate(example_inputs)}

    def hook(module: nn.Module, args: tuple[Any, ...], name: str) -> None:
        for position, arg in enumerate(args):
            index = by_id.get(id(arg))
            if index is None or index in found:
                continue
            if isinstance(module, TimeFold):
                found[index] = (ops.TIME_MAJOR, f"TimeFold {name!r}")
            elif isinstance(module, HnnxModule) and position < len(module.op.inputs):
                kind = module.op.inputs[position].time
                if kind != ops.SAME_TIME:
                    found[index] = (kind, f"{module.op.name} {name!r}")

    handles = [module.register_forward_pre_hook(lambda m, a, name=name: hook(m, a, name))
               for name, module in model.named_modules() if isinstance(module, (TimeFold, HnnxModule))]
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as exc:
        raise HnnxError(f"the model's forward fails on the example inputs: {type(exc).__name__}: {exc}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return found


def _time_layout_of_inputs(proto: onnx.ModelProto, count: int) -> dict[int, tuple[str, str]]:
    """For each of the first ``count`` graph inputs read as time-major: the time layout of the hnnx
    port it reaches and the node (:func:`hnnx.passes.stepwise.time_role_of_input`)."""
    from hnnx.passes.stepwise import time_role_of_input

    found = {}
    for index, info in enumerate(proto.graph.input[:count]):
        role = time_role_of_input(proto, info.name)
        if role is not None:
            found[index] = role
    return found


# Custom neurons from HNN's primitives (hnnx.frontends.neuron), re-exported here.
from hnnx.frontends.neuron import (Neuron, State, accumulate, fire, leak, product, refractory,  # noqa: E402
                                   reset, saturate, threshold, threshold_dynamics)
