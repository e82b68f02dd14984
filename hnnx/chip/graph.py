"""The mapper's front end: an integer (``tianjicx``/``int``) graph as a list of chip layers.

A *layer* is what one group of cores computes: the host's input quantization, a synapse
layer (``ConvInteger``/``MatMulInteger``), a residual *add* (``Add`` of int32 tensors — a
chain of them is one layer — each operand aligned by a power-of-two ``Mul``), a *sum pool* (a window sum: a
depthwise all-ones ``ConvInteger``, or ``ReduceSum`` over per-sample axes), a max pooling,
or a hybrid unit (``hnnx.A2S``, ``hnnx.S2A``). Synapse, add and pooling layers carry an
element-wise chain after their sum: bias ``Add``, ``hnnx.Requantize``, ``Relu``, ``Clip``,
``hnnx.LIF``. An element-wise op on a tensor that is not one such layer's whole output (a
``Concat`` of several layers, an aligned operand) gets a one-operand add layer of its own.

Reshapes, flattens, per-sample transposes, ``Concat``, the ``fold_time`` reshapes of
``[T, N, ...]`` tensors and integer casts move no data: they only say which layer output
(``layer``, ``neuron``, emission ``slot``, ``stage``) each element of a tensor is, so
routing tables absorb them — the tiles of a concatenation are the tiles of its inputs. A
power-of-two ``Mul`` on int32 values marks its elements with a left ``shift`` that the add
layer reading them applies.

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
from hnnx.passes.time import refuse_constant_currents
from hnnx.runtime.data import is_time_major, spec_of


class MappingError(ModelError):
    """The graph cannot be mapped (unsupported node, limit exceeded); the message names the layer."""


STATIC, STEP, WINDOW = "static", "step", "window"
"""Timing of a tensor: once per inference, once per time step, once per S2A window output."""


MAX_ALIGN_SHIFT = 30
"""Largest left shift of an int32 operand (its factor ``2^shift`` must be an int32)."""


@dataclass
class Elements:
    """Where each element of a tensor (flat per-sample order) comes from: output ``neuron``
    of ``layer`` after ``stage`` stages, at emission ``slot`` (−1: the current emission),
    times ``2^shift`` (int32 arithmetic; only add layers read shifted elements)."""

    layer: np.ndarray
    neuron: np.ndarray
    slot: np.ndarray
    stage: np.ndarray
    shift: np.ndarray

    @classmethod
    def of_layer(cls, layer: int, size: int, stage: int = 0) -> "Elements":
        return cls(np.full(size, layer), np.arange(size), np.full(size, -1), np.full(size, stage),
                   np.zeros(size, np.int64))

    @classmethod
    def joined(cls, parts: list["Elements"]) -> "Elements":
        """The elements of ``parts`` one after the other."""
        return cls(*(np.concatenate([getattr(p, key) for p in parts]) for key in ("layer", "neuron", "slot", "stage",
                                                                                  "shift")))

    def take(self, order: np.ndarray) -> "Elements":
        return Elements(self.layer[order], self.neuron[order], self.slot[order], self.stage[order], self.shift[order])

    def staged(self, stage: int) -> "Elements":
        """The same elements after ``stage`` stages of their layer."""
        return Elements(self.layer, self.neuron, self.slot, np.full(self.layer.size, stage), self.shift)

    def single_layer(self) -> int | None:
        """The one layer all elements come from, at the current emission and unshifted, else None."""
        if (self.layer.size and np.all(self.layer == self.layer[0]) and np.all(self.slot == -1)
                and not np.any(self.shift)):
            return int(self.layer[0])
        return None

    def readable(self) -> bool:
        """Whether the host can read these elements from one layer's recorded values as they are
        (one layer, one stage, unshifted; any emission slots)."""
        return bool(self.layer.size) and len(np.unique(self.layer)) == 1 and len(np.unique(self.stage)) == 1 and (
            not np.any(self.shift))


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
    unrolled; ``mask`` marks the synapses that exist), pooling layers a ``mask`` of their
    windows [input_size, size]; an add layer's inputs are its ``attrs["operands"]`` operands
    one after the other (``size`` each; operand ``j`` of output ``i`` is input ``j·size + i``),
    each shifted left by ``sources.shift``. ``stages``: the element-wise chain after the sum
    (synapse, add and pooling layers), each ``{"op": ..., ...}``.
    """

    index: int
    name: str
    kind: str  # input | synapse | add | sumpool | maxpool | a2s | s2a
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

    def stage_dtype(self, stage: int) -> np.dtype:
        """The type of the layer's value after ``stage`` element-wise stages."""
        if self.kind == "input":
            return np.dtype(self.attrs.get("out_dtype", self.attrs["dtype"]))
        if self.kind == "s2a":
            return np.dtype(np.int32)
        # max pooling, A2S and add layers keep their input type; synaptic and window sums are int32
        dtype = np.dtype(np.int32) if self.kind in ("synapse", "sumpool") else np.dtype(self.input_dtype)
        for entry in self.stages[:stage]:
            if entry["op"] == "requantize":
                dtype = np.dtype(np.int8)
            elif entry["op"] in ("bias", "lif"):
                dtype = np.dtype(np.int32)
        return dtype


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


STAGED_KINDS = ("synapse", "add", "sumpool", "maxpool")
"""Layers whose cores run an element-wise chain (``stages``) on their sums."""


def _lead(x: Value) -> int:
    """Leading graph axes of ``x`` that are not per-sample dims: [N] or [T, N]."""
    return 2 if x.timing != STATIC and not x.folded else 1


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.inits = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        self.values: dict[str, Value] = {}
        self.layers: list[Layer] = []
        self.steps = 0
        self.consumers: dict[str, int] = {}
        self.output_names = {vi.name for vi in self.graph.output}
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

    def layer_group(self, node: onnx.NodeProto, x: Value) -> str:
        """The group of a layer computing on ``x``: every step for stepped inputs, else once."""
        if x.timing == WINDOW:
            raise self.fail(node, "layers on windowed S2A outputs [T', N, ...] cannot be mapped "
                                  "(collect them with Transpose to [N, T', ...] first)")
        return "step" if x.timing == STEP else self.group_of(x.elements)

    def set(self, name: str, value: Value) -> None:
        value.name = name
        self.values[name] = value

    def output_of(self, layer: Layer, x: Value, shape: tuple[int, ...], dtype: np.dtype) -> Value:
        """The value of ``layer``'s outputs (in neuron order), timed as its input ``x``."""
        return Value("", x.timing, x.count, x.folded, shape, np.dtype(dtype), Elements.of_layer(layer.index, layer.size))

    def gather(self, node: onnx.NodeProto, x: Value) -> Value:
        """``x`` held by a one-operand add layer of its own (its shifts applied), so that
        element-wise stages can follow it; named after ``node``."""
        layer = self.add_layer(name=node.name or node.output[0], kind="add", group=self.layer_group(node, x),
                               size=x.size, input_dtype=x.dtype, sources=x.elements, attrs={"operands": 1})
        return self.output_of(layer, x, x.shape, x.dtype)

    def plain(self, node: onnx.NodeProto, x: Value) -> Value:
        """``x`` with its alignment shifts applied (only add layers read shifted elements)."""
        return self.gather(node, x) if np.any(x.elements.shift) else x

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
            value = self.values[name]
            if not value.elements.readable():  # e.g. a Concat of several layers: gathered on cores for the host
                self.set(name, self.gather(onnx.helper.make_node("Identity", [name], [name], name=name), value))
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
        if np.any(x.elements.shift) and to != np.int32:
            raise self.fail(node, f"Cast of an aligned int32 tensor (power-of-two Mul) to {to.name} cannot be mapped")
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
        if axis != _lead(x):
            raise self.fail(node, f"Flatten axis {axis} mixes the batch axis with per-sample dims")
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, (x.size,), x.dtype, x.elements))

    def on_Transpose(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        perm = list(onnx.helper.get_attribute_value(node.attribute[0]))
        lead = _lead(x)
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

    def per_sample_axis(self, node: onnx.NodeProto, x: Value, axis: int) -> int:
        """An ONNX axis of ``x`` as a per-sample axis; MappingError for the batch or time axis."""
        lead = _lead(x)
        rank = lead + len(x.shape)
        if not -rank <= axis < rank:
            raise self.fail(node, f"axis {axis} is out of range for rank {rank}")
        axis = axis + rank if axis < 0 else axis
        if axis < lead:
            raise self.fail(node, f"{node.op_type} over the batch or time axis cannot be mapped")
        return axis - lead

    def on_Concat(self, node: onnx.NodeProto) -> None:
        """Data movement only: the joined tensor's elements are its inputs' (their tiles feed its readers)."""
        parts = [self.value(node, name) for name in node.input]
        first = parts[0]
        if any((p.timing, p.count, p.folded, p.dtype) != (first.timing, first.count, first.folded, first.dtype)
               for p in parts):
            raise self.fail(node, "Concat inputs differ in type or in time layout")
        axis = self.per_sample_axis(node, first, next(a.i for a in node.attribute if a.name == "axis"))
        rest = [s for i, s in enumerate(first.shape) if i != axis]
        if any(len(p.shape) != len(first.shape) or [s for i, s in enumerate(p.shape) if i != axis] != rest
               for p in parts):
            raise self.fail(node, f"Concat inputs of shapes {[list(p.shape) for p in parts]} do not join on axis "
                                  f"{axis + _lead(first)}")
        offsets = np.cumsum([0] + [p.size for p in parts])
        order = np.concatenate([np.arange(p.size).reshape(p.shape) + offset for p, offset in zip(parts, offsets)],
                               axis=axis).reshape(-1)
        shape = list(first.shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        elements = Elements.joined([p.elements for p in parts]).take(order)
        self.set(node.output[0], Value("", first.timing, first.count, first.folded, tuple(shape), first.dtype,
                                       elements))

    def on_Mul(self, node: onnx.NodeProto) -> None:
        """An int32 tensor times a power of two (how a residual Add or a Concat aligns scales):
        its elements are marked with the left shift, which the add layer reading them applies."""
        data = [name for name in node.input if name not in self.inits]
        factor = self.const(node, 1 if node.input[0] in data else 0) if len(data) == 1 else None
        x = self.value(node, data[0]) if len(data) == 1 else None
        if x is None or factor is None or factor.size != 1 or factor.dtype.kind not in "iu" or x.dtype != np.int32:
            raise self.fail(node, "Mul is mapped only as an int32 tensor times a constant power of two (the "
                                  "alignment of a residual Add or a Concat)")
        k = int(factor.reshape(()))
        if k <= 0 or k & (k - 1):
            raise self.fail(node, f"Mul by {k}: the chip aligns values by left shifts (a power-of-two factor)")
        shift = x.elements.shift + (k.bit_length() - 1)
        if shift.max() > MAX_ALIGN_SHIFT:
            raise self.fail(node, f"a left shift of {int(shift.max())} bits leaves int32 (at most {MAX_ALIGN_SHIFT})")
        e = x.elements
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, x.shape, x.dtype,
                                       Elements(e.layer, e.neuron, e.slot, e.stage, shift)))

    def on_Add(self, node: onnx.NodeProto) -> None:
        data = [name for name in node.input if name not in self.inits]
        if len(data) == 2:
            self.residual(node)
            return
        data_index = 0 if node.input[0] in self.values else 1
        x = self.value(node, node.input[data_index])
        bias = self.const(node, 1 - data_index)
        if bias is None or bias.dtype != np.int32:
            raise self.fail(node, "Add is mapped as an int32 bias or a sum of int32 tensors")
        full = (1,) * _lead(x) + x.shape
        if bias.ndim > len(full):
            raise self.fail(node, f"bias of shape {list(bias.shape)} does not broadcast per sample")
        try:
            per_element = np.broadcast_to(bias, full).reshape(-1)
        except ValueError:
            raise self.fail(node, f"bias of shape {list(bias.shape)} varies over the batch or time axis") from None
        layer, x = self.stage_target(node, x)
        if any(stage["op"] == "bias" for stage in layer.stages):
            raise self.fail(node, "a second int32 bias on one layer: a neuron holds one bias (add the two constants "
                                  "into one)")
        neuron_bias = np.zeros(layer.size, np.int32)
        neuron_bias[x.elements.neuron] = per_element
        self.push_stage(node, layer, x, {"op": "bias", "bias": neuron_bias}, np.dtype(np.int32))

    def residual(self, node: onnx.NodeProto) -> None:
        """``Add`` of int32 tensors: one add layer; a chain of Adds (the quantizer's form of a
        many-operand ``Sum``, which ONNX defines for floats only) extends the layer of the first."""
        operands = [self.value(node, name) for name in node.input]
        first = operands[0]
        if any(o.dtype != np.int32 for o in operands):
            raise self.fail(node, f"{node.op_type} of {', '.join(sorted({o.dtype.name for o in operands}))} tensors: "
                                  f"the chip adds int32 values (cast the operands to int32)")
        if any((o.shape, o.timing, o.count, o.folded) != (first.shape, first.timing, first.count, first.folded)
               for o in operands):
            raise self.fail(node, f"{node.op_type} of shapes {[list(o.shape) for o in operands]}: the operands of "
                                  f"an add must have one shape and time layout (no broadcasting)")
        for index, (name, operand) in enumerate(zip(node.input, operands)):
            layer = self.extendable(name, operand)
            if layer is not None:
                others = operands[:index] + operands[index + 1:]
                layer.sources = Elements.joined([layer.sources, *(o.elements for o in others)])
                layer.attrs["operands"] += len(others)
                del self.values[name]  # its value now holds the longer sum
                self.set(node.output[0], self.output_of(layer, first, first.shape, first.dtype))
                return
        sources = Elements.joined([o.elements for o in operands])
        joined = Value("", first.timing, first.count, first.folded, first.shape, first.dtype, sources)
        layer = self.add_layer(name=node.name or node.output[0], kind="add", group=self.layer_group(node, joined),
                               size=first.size, input_dtype=np.dtype(np.int32), sources=sources,
                               attrs={"operands": len(operands)})
        self.set(node.output[0], self.output_of(layer, first, first.shape, first.dtype))

    def extendable(self, name: str, x: Value) -> Layer | None:
        """The add layer whose plain sum ``x`` is, when nothing else reads that sum."""
        layer = self.stageable(x)
        if (layer is None or layer.kind != "add" or layer.stages or self.consumers.get(name, 0) != 1
                or name in self.output_names or not np.array_equal(x.elements.neuron, np.arange(layer.size))):
            return None
        return layer

    # element-wise stages appended to the producing layer
    def stageable(self, x: Value) -> Layer | None:
        """The layer whose latest value ``x`` is, whole (in any order), when it can take stages."""
        owner = x.elements.single_layer()
        layer = self.layers[owner] if owner is not None else None
        if (layer is None or layer.kind not in STAGED_KINDS or np.any(x.elements.stage != len(layer.stages))
                or not np.array_equal(np.sort(x.elements.neuron), np.arange(layer.size))):
            return None
        return layer

    def stage_target(self, node: onnx.NodeProto, x: Value) -> tuple[Layer, Value]:
        """The layer that runs ``node`` on ``x`` as its next stage (a new add layer holding ``x``
        when no layer can), and ``x`` as that layer's value."""
        layer = self.stageable(x)
        if layer is None:
            x = self.gather(node, x)
            layer = self.layers[int(x.elements.layer[0])]
        return layer, x

    def push_stage(self, node: onnx.NodeProto, layer: Layer, x: Value, stage: dict[str, Any], dtype: np.dtype) -> None:
        layer.stages.append(stage)
        self.set(node.output[0], Value("", x.timing, x.count, x.folded, x.shape, np.dtype(dtype),
                                       x.elements.staged(len(layer.stages))))

    def stage_on(self, node: onnx.NodeProto, x: Value, stage: dict[str, Any], dtype: np.dtype) -> None:
        layer, x = self.stage_target(node, x)
        self.push_stage(node, layer, x, stage, dtype)

    def on_Requantize(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        shift = ops.Requantize.view(node).attrs["shift"]
        self.stage_on(node, x, {"op": "requantize", "shift": shift, "node": node.name}, np.dtype(np.int8))

    def on_Relu(self, node: onnx.NodeProto) -> None:
        x = self.value(node, node.input[0])
        self.stage_on(node, x, {"op": "relu"}, x.dtype)

    def on_Clip(self, node: onnx.NodeProto) -> None:
        """``Clip`` on integers (ReLU6 and the like): ``min(max(x, low), high)`` in the value's type."""
        x = self.value(node, node.input[0])
        if x.dtype.kind not in "iu":
            raise self.fail(node, f"Clip on {x.dtype.name}: the chip computes in integers")
        info = np.iinfo(x.dtype)
        bounds = []
        for index, default in ((1, info.min), (2, info.max)):
            bound = self.const(node, index)
            if bound is not None and bound.size != 1:
                raise self.fail(node, "Clip bounds must be scalars")
            bounds.append(int(default) if bound is None else int(bound.reshape(())))
        self.stage_on(node, x, {"op": "clip", "low": bounds[0], "high": bounds[1]}, x.dtype)

    def on_LIF(self, node: onnx.NodeProto) -> None:
        view = ops.LIF.view(node)
        if view.attrs["mode"] != "integer":
            raise self.fail(node, "float LIF: lower the integer graph (hnnx quantize, or --calib)")
        if any(view.inputs[1:]) or view.n_outputs > 1:
            raise self.fail(node, "LIF with initial-state inputs or final-state outputs cannot be mapped")
        x = self.value(node, node.input[0])
        if x.timing != STEP:
            raise self.fail(node, "LIF needs a time-stepped input [T, N, ...]")
        attrs = {k: v for k, v in view.attrs.items() if v is not None and k not in ("surrogate", "surrogate_width")}
        self.stage_on(node, x, {"op": "lif", "attrs": attrs, "node": view.name}, np.dtype(np.int32))

    def on_Neuron(self, node: onnx.NodeProto) -> None:
        """A custom neuron maps when its step is an ``hnnx.LIF`` (what the soma computes); otherwise
        the error names the first operation of its step that the soma cannot compute."""
        view = ops.Neuron.view(node)
        if any(view.inputs[1:]) or view.n_outputs > 1:
            raise self.fail(node, "custom neuron with initial-state inputs or final-state outputs cannot be mapped")
        match = ops.Neuron.as_lif(view)
        if isinstance(match, str):
            raise self.fail(node, f"custom neuron cannot be mapped onto the soma, which computes hnnx.LIF steps: "
                                  f"{match}")
        self.on_LIF(ops.make_node("LIF", node.input[:1], node.output[:1], name=node.name or node.output[0],
                                  **{key: value for key, value in match.attrs.items() if value is not None}))

    def synapse(self, node: onnx.NodeProto, x: Value, weights: np.ndarray, mask: np.ndarray, shape: tuple[int, ...],
                conv: dict[str, int] | None) -> None:
        if x.dtype not in (np.int8, np.uint8):
            raise self.fail(node, f"{node.op_type} input must be int8/uint8 on the chip, got {x.dtype}")
        layer = self.add_layer(name=node.name or node.output[0], kind="synapse", group=self.layer_group(node, x),
                               size=int(weights.shape[1]), input_dtype=x.dtype, sources=x.elements,
                               weights=weights, mask=mask, conv=conv, attrs={"op": node.op_type})
        layer.spiking_input = all(self.layers[i].spiking_output for i in np.unique(x.elements.layer))
        self.set(node.output[0], self.output_of(layer, x, shape, np.dtype(np.int32)))

    def pooling(self, node: onnx.NodeProto, x: Value, kind: str, mask: np.ndarray, shape: tuple[int, ...]) -> None:
        """A max pooling or window-sum layer over the windows ``mask`` [x.size, outputs]."""
        x = self.plain(node, x)
        layer = self.add_layer(name=node.name or node.output[0], kind=kind, group=self.layer_group(node, x),
                               size=int(mask.shape[1]), input_dtype=x.dtype, sources=x.elements, mask=mask,
                               attrs={"op": node.op_type})
        self.set(node.output[0], self.output_of(layer, x, shape, layer.stage_dtype(0)))

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
        """A convolution (synapse layer), or a window sum when it is depthwise with all-one
        weights (the integer form of average pooling)."""
        x = self.value(node, node.input[0])
        weight = self.const(node, 1)
        self.zero_points(node)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if weight is None or weight.ndim != 4 or len(x.shape) != 3:
            raise self.fail(node, "only 2-D ConvInteger with a constant weight is mapped")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.fail(node, "auto_pad is not supported by the mapper")
        group = int(attrs.get("group", 1))
        dense, mask, out_shape = unroll_conv(weight.astype(np.int8), x.shape, list(attrs.get("strides", [1, 1])),
                                             list(attrs.get("pads", [0, 0, 0, 0])),
                                             list(attrs.get("dilations", [1, 1])), group)
        if group > 1 and group == x.shape[0] == weight.shape[0] and weight.shape[1] == 1 and np.all(weight == 1):
            self.pooling(node, x, "sumpool", mask, out_shape)
            return
        conv = {"in_channels": x.shape[0], "out_channels": int(weight.shape[0]),
                "kernel": int(weight.shape[2] * weight.shape[3]), "in_plane": x.shape[1] * x.shape[2],
                "out_plane": out_shape[1] * out_shape[2], "group": group}
        self.synapse(node, x, dense, mask, out_shape, conv)

    def on_ReduceSum(self, node: onnx.NodeProto) -> None:
        """A sum over per-sample axes (the integer global average pool): a window-sum layer."""
        x = self.value(node, node.input[0])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = self.const(node, 1)
        axes = list(attrs.get("axes", [])) if axes is None else [int(a) for a in axes.reshape(-1)]
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                self.on_Identity(node)
                return
            raise self.fail(node, "ReduceSum over every axis (the batch axis too) cannot be mapped")
        if x.dtype != np.int32:
            raise self.fail(node, f"ReduceSum of {x.dtype.name} values: the chip sums in int32 (cast to int32 first)")
        reduced = {self.per_sample_axis(node, x, a) for a in axes}
        kept = tuple(1 if i in reduced else d for i, d in enumerate(x.shape))
        coords = np.unravel_index(np.arange(x.size), x.shape)
        target = np.ravel_multi_index([np.zeros_like(c) if i in reduced else c for i, c in enumerate(coords)], kept)
        mask = np.zeros((x.size, math.prod(kept)), bool)
        mask[np.arange(x.size), target] = True
        shape = kept if attrs.get("keepdims", 1) else tuple(d for i, d in enumerate(x.shape) if i not in reduced)
        self.pooling(node, x, "sumpool", mask, shape)

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
        self.pooling(node, x, "maxpool", mask, out_shape)

    def on_A2S(self, node: onnx.NodeProto) -> None:
        view = ops.A2S.view(node)
        x = self.value(node, node.input[0])
        if view.attrs["mode"] != "integer" or any(view.inputs[1:]):
            raise self.fail(node, "only integer-mode A2S (direct or rate coding) is mapped")
        if x.timing != STATIC:
            raise self.fail(node, "A2S input must be a static [N, ...] tensor")
        if self.steps and self.steps != view.attrs["steps"]:
            raise self.fail(node, f"A2S steps {view.attrs['steps']} differ from the model's {self.steps} steps")
        x = self.plain(node, x)
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
        x = self.plain(node, x)
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
    refuse_constant_currents(model, "chip mapping")
    return _Builder(model).build()
