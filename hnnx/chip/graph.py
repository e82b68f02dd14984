"""The mapper's front end: an integer (``tianjicx``/``int``) graph as a list of chip layers.

A *layer* is what one group of cores computes: the host's input quantization, a synapse
layer (``ConvInteger``/``MatMulInteger`` with its element-wise chain: bias ``Add``,
``hnnx.Requantize``, ``Relu``, ``hnnx.LIF``), a hybrid unit (``hnnx.A2S``, ``hnnx.S2A``) or
a max pooling. Reshapes, flattens, per-sample transposes, the ``fold_time`` reshapes of
``[T, N, ...]`` tensors and integer casts move no data: they only say which layer output
(``layer``, ``neuron``, emission ``slot``, ``stage``) each element of a tensor is, so
routing tables absorb them.

Layers run in one of three *groups*: ``prologue`` (once, before the first time step: the
ANN part in front of an A2S), ``step`` (every time step) and ``epilogue`` (once, after
the last step: the ANN part behind an S2A).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from hnnx import ops
from hnnx.errors import ModelError
from hnnx.runtime.data import is_time_major, spec_of


class MappingError(ModelError):
    """The graph cannot be mapped (unsupported node, limit exceeded); the message names the layer."""


STATIC, STEP, WINDOW = "static", "step", "window"
"""Timing of a tensor: once per inference, once per time step, once per S2A window output."""


@dataclass
class Elements:
    """Where each element of a tensor (flat per-sample order) comes from: output ``neuron``
    of ``layer`` after ``stage`` stages, at emission ``slot`` (−1: the current emission)."""

    layer: np.ndarray
    neuron: np.ndarray
    slot: np.ndarray
    stage: np.ndarray

    @classmethod
    def of_layer(cls, layer: int, size: int, stage: int = 0) -> "Elements":
        return cls(np.full(size, layer), np.arange(size), np.full(size, -1), np.full(size, stage))

    def take(self, order: np.ndarray) -> "Elements":
        return Elements(self.layer[order], self.neuron[order], self.slot[order], self.stage[order])

    def single_layer(self) -> int | None:
        """The one layer all elements come from, at the current emission, else None."""
        if self.layer.size and np.all(self.layer == self.layer[0]) and np.all(self.slot == -1):
            return int(self.layer[0])
        return None


@dataclass
class Value:
    """A graph tensor as the mapper sees it (per sample: no N axis, no T axis)."""

    name: str
    timing: str
    count: int  # emissions per inference (T for step tensors)
    folded: bool  # stored as [T*N, ...] in the graph (time folded into the batch axis)
    shape: tuple[int, ...]
    dtype: np.dtype
    elements: Elements

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Layer:
    """One layer of the chip program (see the module docstring).

    ``sources`` [input_size] say which element feeds each input (axon) of the layer;
    synapse layers hold a dense ``weights`` [input_size, size] int8 matrix (convolutions
    unrolled; ``mask`` marks the synapses that exist) and ``stages`` — the element-wise
    chain after the synaptic sum, each ``{"op": ..., ...}``.
    """

    index: int
    name: str
    kind: str  # input | synapse | a2s | s2a | maxpool
    group: str  # prologue | step | epilogue
    size: int
    input_dtype: np.dtype
    sources: Elements | None
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: np.ndarray | None = None
    mask: np.ndarray | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    conv: dict[str, int] | None = None
    spiking_input: bool = False

    @property
    def input_size(self) -> int:
        return 0 if self.sources is None else int(self.sources.layer.size)

    @property
    def spiking_output(self) -> bool:
        if self.kind == "a2s":
            return ops.A2S.emits_spikes(ops.A2S.view_for(self.attrs, (True,), 1, self.name))
        return bool(self.stages) and self.stages[-1]["op"] == "lif"


@dataclass
class LayerGraph:
    """Layers in execution order, and the graph's tensors the program can read out."""

    layers: list[Layer]
    values: dict[str, Value]
    inputs: list[str]
    outputs: list[str]
    steps: int


def _dims(value_info: onnx.ValueInfoProto) -> tuple[Any, ...] | None:
    return spec_of(value_info).dims


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.inits = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        self.values: dict[str, Value] = {}
        self.layers: list[Layer] = []
        self.steps = 0
        self.consumers: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1

    # ------------------------------------------------------------------ helpers
    def fail(self, node: onnx.NodeProto, message: str) -> MappingError:
        return MappingError(f"{node.name or node.op_type}: {message}")

    def value(self, node: onnx.NodeProto, name: str) -> Value:
        if name not in self.values:
            if name in self.inits:
                raise self.fail(node, f"constant input {name!r} where the mapper expects a data tensor")
            raise self.fail(node, f"input {name!r} is not produced by a mapped node")
        return self.values[name]

    def const(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.inits:
            raise self.fail(node, f"input {index} ({name!r}) must be a constant initializer")
        return self.inits[name]

    def add_layer(self, **kwargs: Any) -> Layer:
        layer = Layer(index=len(self.layers), **kwargs)
        self.layers.append(layer)
        return layer

    def group_of(self, sources: Elements) -> str:
        groups = {self.layers[i].group for i in np.unique(sources.layer)}
        if any(self.layers[i].kind == "s2a" for i in np.unique(sources.layer)) or "step" in groups:
            return "epilogue"
        return "epilogue" if "epilogue" in groups else "prologue"

    def set(self, name: str, value: Value) -> None:
        value.name = name
        self.values[name] = value

    # ------------------------------------------------------------------ handlers
    def build(self) -> LayerGraph:
        inputs = [vi for vi in self.graph.input if vi.name not in self.inits]
        for vi in inputs:
            dims = _dims(vi)
            if dims is None or is_time_major(dims):
                raise MappingError(f"input {vi.name!r}: the mapper takes inputs [N, ...] (time-major inputs are "
                                   f"not supported)")
            if any(not isinstance(d, int) for d in dims[1:]):
                raise MappingError(f"input {vi.name!r}: its per-sample dims {list(dims[1:])} must be fixed")
            shape = tuple(int(d) for d in dims[1:])
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
            layer = self.add_layer(name=vi.name, kind="input", group="prologue", size=math.prod(shape),
                                   input_dtype=dtype, sources=None, attrs={"dtype": dtype.name})
            self.set(vi.name, Value(vi.name, STATIC, 1, False, shape, dtype, Elements.of_layer(layer.index, layer.size)))
        for node in self.graph.node:
            handler = getattr(self, f"on_{node.op_type}", None)
            if handler is None or (node.domain not in ("", "ai.onnx") and node.domain != ops.DOMAIN):
                raise self.fail(node, f"{node.op_type} cannot be mapped onto the chip")
            handler(node)
        outputs = [vi.name for vi in self.graph.output]
        for name in outputs:
            if name not in self.values:
                raise MappingError(f"output {name!r} is not produced by a mapped node")
        return LayerGraph(self.layers, self.values, [vi.name for vi in inputs], outputs, self.steps)

    def on_QuantizeLinear(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        owner = x.elements.single_layer()
        layer = self.layers[owner] if owner is not None else None
        if layer is None or layer.kind != "input" or "scale" in layer.attrs or x.dtype != np.float32:
            raise self.fail(node, "QuantizeLinear is mapped only on a float graph input (the host quantizes it)")
        scale, zero = self.const(node, 1), self.const(node, 2)
        if scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
            raise self.fail(node, "the host quantizes inputs per tensor (scalar scale and zero point)")
        zero_dtype = np.dtype(np.uint8) if zero is None else zero.dtype
        layer.attrs.update(scale=float(scale.reshape(())), zero_point=int(0 if zero is None else zero.reshape(())),
                           out_dtype=zero_dtype.name)
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, x.shape, zero_dtype, x.elements))

    def on_Identity(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, x.shape, x.dtype, x.elements))

    def on_Cast(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx.helper.get_attribute_value(node.attribute[0])))
        if to.kind not in "iu":
            raise self.fail(node, f"Cast to {to.name}: the chip computes in integers")
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, x.shape, to, x.elements))

    def on_Reshape(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        target = [int(d) for d in self.const(node, 1)]
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if not allowzero and 0 in target:
            raise self.fail(node, "Reshape with 0 (copy) dims is not supported by the mapper")
        if len(target) >= 2 and target[1] == -1 and target[0] > 0 and x.timing != STATIC:
            folded, rest = False, target[2:]  # [T, -1, ...]: time unfolded from the batch
            if target[0] != x.count:
                raise self.fail(node, f"Reshape to {target} splits {x.count} time steps into {target[0]}")
        elif target and target[0] == -1:
            folded, rest = x.timing != STATIC, target[1:]  # [-1, ...]: batch (and time) axis kept whole
        else:
            raise self.fail(node, f"Reshape to {target} mixes the batch or time axis with per-sample dims")
        if -1 in rest or math.prod(rest) != x.size:
            raise self.fail(node, f"Reshape to {target} changes the per-sample size {x.size}")
        self.set(node.output[0], Value("", x.timing, x.count, folded, tuple(rest), x.dtype, x.elements))

    def on_Flatten(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        lead = 2 if x.timing != STATIC and not x.folded else 1
        if axis != lead:
            raise self.fail(node, f"Flatten axis {axis} mixes the batch axis with per-sample dims")
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, (x.size,), x.dtype, x.elements))

    def on_Transpose(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        perm = list(onnx.helper.get_attribute_value(node.attribute[0]))
        lead = 2 if x.timing != STATIC and not x.folded else 1
        index = np.arange(x.size).reshape(x.shape)
        if perm[:lead] == list(range(lead)):  # a per-sample permutation
            order = np.transpose(index, [p - lead for p in perm[lead:]]).reshape(-1)
            self.set(node.output[0], Value("", x.timing, x.count, x.folded,
                                           tuple(x.shape[p - lead] for p in perm[lead:]), x.dtype,
                                           x.elements.take(order)))
            return
        if lead == 2 and perm[:2] == [1, 0] and sorted(perm[2:]) == list(range(2, len(perm))):
            # [T, N, ...] → [N, T, ...]: the time sequence becomes one static tensor.
            inner = np.transpose(index, [p - 2 for p in perm[2:]]).reshape(-1)
            count = x.count
            order = np.tile(inner, count)
            elements = x.elements.take(order)
            elements.slot = np.repeat(np.arange(count), inner.size)
            shape = (count, *(x.shape[p - 2] for p in perm[2:]))
            self.set(node.output[0], Value("", STATIC, 1, False, shape, x.dtype, elements))
            return
        raise self.fail(node, f"Transpose {perm} moves the batch axis")

    # element-wise stages appended to the producing layer
    def stage_on(self, node: onnx.NodeProto, x: Value, stage: dict[str, Any], dtype: np.dtype,
                 need_step: bool = False) -> None:
        owner = x.elements.single_layer()
        layer = self.layers[owner] if owner is not None else None
        if (layer is None or layer.kind != "synapse" or np.any(x.elements.stage != len(layer.stages))
                or not np.array_equal(np.sort(x.elements.neuron), np.arange(layer.size))):
            raise self.fail(node, f"{node.op_type} must follow a Conv/MatMul layer's whole output "
                                  f"(element-wise ops are fused into the layer's cores)")
        if need_step and x.timing != STEP:
            raise self.fail(node, f"{node.op_type} needs a time-stepped input [T, N, ...]")
        layer.stages.append(stage)
        elements = Elements(x.elements.layer, x.elements.neuron, x.elements.slot, x.elements.stage + 1)
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, x.shape, dtype, elements))

    def on_Add(self, node: onnx.NodeProto) -> None:
        data_index = 0 if node.input[0] in self.values else 1
        x = self.value(node, node.input[data_index])
        bias = self.const(node, 1 - data_index)
        if bias is None or bias.dtype != np.int32:
            raise self.fail(node, "Add is mapped only as an int32 bias of a Conv/MatMul layer")
        lead = 2 if x.timing != STATIC and not x.folded else 1
        full = (1,) * lead + x.shape
        if bias.ndim > len(full):
            raise self.fail(node, f"bias of shape {list(bias.shape)} does not broadcast per sample")
        try:
            per_element = np.broadcast_to(bias, full).reshape(-1)
        except ValueError:
            raise self.fail(node, f"bias of shape {list(bias.shape)} varies over the batch or time axis") from None
        neuron_bias = np.zeros(x.size, np.int32)
        neuron_bias[x.elements.neuron] = per_element
        self.stage_on(node, x, {"op": "bias", "bias": neuron_bias}, np.dtype(np.int32))

    def on_Requantize(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        shift = ops.Requantize.view(node).attrs["shift"]
        self.stage_on(node, x, {"op": "requantize", "shift": shift, "node": node.name}, np.dtype(np.int8))

    def on_Relu(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        self.stage_on(node, x, {"op": "relu"}, x.dtype)

    def on_LIF(self, node: onnx.NodeProto) -> None:
        view = ops.LIF.view(node)
        if view.attrs["mode"] != "integer":
            raise self.fail(node, "float LIF: lower the integer graph (hnnx quantize, or --calib)")
        if any(view.inputs[1:]) or view.n_outputs > 1:
            raise self.fail(node, "LIF with initial-state inputs or final-state outputs cannot be mapped")
        x = self.value(node, node.input[0])
        attrs = {k: v for k, v in view.attrs.items() if v is not None and k not in ("surrogate", "surrogate_width")}
        self.stage_on(node, x, {"op": "lif", "attrs": attrs, "node": view.name}, np.dtype(np.int32), need_step=True)

    def synapse(self, node: onnx.NodeProto, x: Value, weights: np.ndarray, mask: np.ndarray, shape: tuple[int, ...],
                conv: dict[str, int] | None) -> None:
        if x.dtype not in (np.int8, np.uint8):
            raise self.fail(node, f"{node.op_type} input must be int8/uint8 on the chip, got {x.dtype}")
        group = "step" if x.timing == STEP else self.group_of(x.elements)
        if x.timing == WINDOW:
            raise self.fail(node, "layers on windowed S2A outputs [T', N, ...] cannot be mapped "
                                  "(collect them with Transpose to [N, T', ...] first)")
        layer = self.add_layer(name=node.name or node.output[0], kind="synapse", group=group,
                               size=int(weights.shape[1]), input_dtype=x.dtype, sources=x.elements,
                               weights=weights, mask=mask, conv=conv, attrs={"op": node.op_type})
        layer.spiking_input = all(self.layers[i].spiking_output for i in np.unique(x.elements.layer))
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, shape, np.dtype(np.int32),
                                       Elements.of_layer(layer.index, layer.size)))

    def zero_points(self, node: onnx.NodeProto) -> None:
        for index in (2, 3):
            zero = self.const(node, index)
            if zero is not None and np.any(zero != 0):
                raise self.fail(node, "non-zero zero points cannot be mapped (the chip's weights are symmetric)")

    def on_MatMulInteger(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        weight = self.const(node, 1)
        self.zero_points(node)
        if weight is None or weight.ndim != 2 or x.shape != (weight.shape[0],):
            raise self.fail(node, f"MatMulInteger needs a constant [K, M] weight and a [N, K] input, got input "
                                  f"{list(x.shape)} per sample")
        self.synapse(node, x, weight.astype(np.int8), np.ones(weight.shape, bool), (int(weight.shape[1]),), None)

    def on_ConvInteger(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        weight = self.const(node, 1)
        self.zero_points(node)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if weight is None or weight.ndim != 4 or len(x.shape) != 3:
            raise self.fail(node, "only 2-D ConvInteger with a constant weight is mapped")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.fail(node, "auto_pad is not supported by the mapper (use explicit pads)")
        group = int(attrs.get("group", 1))
        dense, mask, out_shape = unroll_conv(weight.astype(np.int8), x.shape, list(attrs.get("strides", [1, 1])),
                                             list(attrs.get("pads", [0, 0, 0, 0])),
                                             list(attrs.get("dilations", [1, 1])), group)
        conv = {"in_channels": x.shape[0], "out_channels": int(weight.shape[0]),
                "kernel": int(weight.shape[2] * weight.shape[3]), "in_plane": x.shape[1] * x.shape[2],
                "out_plane": out_shape[1] * out_shape[2], "group": group}
        self.synapse(node, x, dense, mask, out_shape, conv)

    def on_MaxPool(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if len(node.output) > 1 and node.output[1]:
            raise self.fail(node, "MaxPool indices output cannot be mapped")
        if attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.fail(node, "MaxPool with ceil_mode or auto_pad cannot be mapped")
        if len(x.shape) != 3:
            raise self.fail(node, "only 2-D MaxPool is mapped")
        kernel = list(attrs["kernel_shape"])
        channels = x.shape[0]
        ones = np.ones((channels, 1, *kernel), np.int8)
        _, mask, out_shape = unroll_conv(ones, x.shape, list(attrs.get("strides", [1, 1])),
                                         list(attrs.get("pads", [0, 0, 0, 0])), list(attrs.get("dilations", [1, 1])),
                                         channels)
        group = "step" if x.timing == STEP else self.group_of(x.elements)
        layer = self.add_layer(name=node.name or node.output[0], kind="maxpool", group=group,
                               size=int(mask.shape[1]), input_dtype=x.dtype, sources=x.elements, mask=mask,
                               attrs={"op": "MaxPool"})
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, out_shape, x.dtype,
                                       Elements.of_layer(layer.index, layer.size)))

    def on_A2S(self, node: onnx.NodeProto) -> None:
        view = ops.A2S.view(node)
        x = self.value(node, node.input[0])
        if view.attrs["mode"] != "integer" or any(view.inputs[1:]):
            raise self.fail(node, "only integer-mode A2S (direct or rate coding) is mapped")
        if x.timing != STATIC:
            raise self.fail(node, "A2S input must be a static [N, ...] tensor")
        if self.steps and self.steps != view.attrs["steps"]:
            raise self.fail(node, f"A2S steps {view.attrs['steps']} differ from the model's {self.steps} steps")
        self.steps = view.attrs["steps"]
        attrs = {k: v for k, v in view.attrs.items() if v is not None}
        layer = self.add_layer(name=view.name, kind="a2s", group="step", size=x.size, input_dtype=x.dtype,
                               sources=x.elements, attrs=attrs)
        self.set(node.output[0], Value("", STEP, self.steps, False, x.shape, x.dtype,
                                       Elements.of_layer(layer.index, layer.size)))

    def on_S2A(self, node: onnx.NodeProto) -> None:
        view = ops.S2A.view(node)
        x = self.value(node, node.input[0])
        if view.attrs["mode"] != "integer" or any(view.inputs[1:]):
            raise self.fail(node, "only integer-mode S2A (rate or global decoding) is mapped")
        if x.timing != STEP:
            raise self.fail(node, "S2A input must be a time-stepped [T, N, ...] tensor")
        attrs = {k: v for k, v in view.attrs.items() if v is not None}
        layer = self.add_layer(name=view.name, kind="s2a", group="step", size=x.size, input_dtype=x.dtype,
                               sources=x.elements, attrs=attrs)
        elements = Elements.of_layer(layer.index, layer.size)
        if view.attrs["decoding"] == "global":
            self.set(node.output[0], Value("", STATIC, 1, False, x.shape, x.dtype, elements))
            return
        window, *_, per_window = ops.S2A.geometry(view.attrs)
        if x.count % window:
            raise self.fail(node, f"S2A window {window} does not divide {x.count} time steps")
        layer.attrs["emissions"] = x.count // window * per_window
        self.set(node.output[0], Value("", WINDOW, x.count // window * per_window, False, x.shape, x.dtype, elements))


def unroll_conv(weight: np.ndarray, in_shape: tuple[int, ...], strides: list[int], pads: list[int],
                dilations: list[int], group: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """A 2-D convolution as a dense matrix ``[C·H·W, Co·Ho·Wo]`` (int8) and its synapse mask.

    ``weight`` [Co, C/group, kh, kw]; ``pads`` [top, left, bottom, right] (ONNX order).
    """
    channels, height, width = in_shape
    out_channels, per_group, kh, kw = weight.shape
    out_h = (height + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (width + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    co, ci, ky, kx, oy, ox = np.meshgrid(np.arange(out_channels), np.arange(per_group), np.arange(kh), np.arange(kw),
                                         np.arange(out_h), np.arange(out_w), indexing="ij")
    iy = oy * strides[0] - pads[0] + ky * dilations[0]
    ix = ox * strides[1] - pads[1] + kx * dilations[1]
    in_channel = (co // (out_channels // group)) * per_group + ci
    valid = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
    rows = ((in_channel * height + iy) * width + ix)[valid]
    cols = ((co * out_h + oy) * out_w + ox)[valid]
    dense = np.zeros((channels * height * width, out_channels * out_h * out_w), np.int8)
    mask = np.zeros(dense.shape, bool)
    dense[rows, cols] = weight[co[valid], ci[valid], ky[valid], kx[valid]]
    mask[rows, cols] = True
    return dense, mask, (out_channels, out_h, out_w)


def layer_graph(model: onnx.ModelProto) -> LayerGraph:
    """The chip layers of an integer graph; MappingError naming the node it cannot map."""
    return _Builder(model).build()
