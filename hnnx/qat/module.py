"""A trainable torch module built from an hnnx ONNX graph, and the way back into the graph.

:class:`GraphModule` runs the graph node by node: standard ops through the kernels of
:mod:`hnnx.qat.kernels` (straight-through estimators for rounding, quantization and casts),
hnnx nodes through their declarations' torch forward (:mod:`hnnx.qat.hnnx_nodes`). The graph's
trainable initializers become ``nn.Parameter`` s; :meth:`GraphModule.write_back` writes their
values into a copy of the same graph — same nodes, same initializer names, same structure —
so onnxruntime, ``hnnx quantize`` and ``hnnx lower`` read the trained model as they read the
original.

Which initializers train:

* **float graphs**: the weights and biases of ``Conv``/``Gemm``/``MatMul`` (a bias ``Add`` after
  a ``MatMul`` or ``Conv`` included), the scale and offset of ``BatchNormalization`` (its running
  statistics stay), and the ``weight``/``bias``/``recurrent_weight`` inputs of hnnx nodes;
* **tianjicx fake-quant graphs** (``hnnx quantize --format fakequant``): the float weight
  sources behind each ``QuantizeLinear → DequantizeLinear`` pair and the layers' bias constants;
  every scale, window sum and clip bound stays. Each bias runs fake-quantized onto the integer
  grid of its accumulator (``round(b / g)·g``, ``g`` the accumulator's value per unit, straight
  through) and is written back on that grid, so the written graph computes what the module
  computed and re-quantizes to the same integers.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from hnnx import ops
from hnnx.errors import DataError, ModelError
from hnnx.qat.hnnx_nodes import hnnx_kernel
from hnnx.qat.kernels import Kernel, NodeContext, as_torch, build_kernel, straight_through

INT32_RANGE = (-(2**31), 2**31 - 1)
_HNNX_PARAMETER_PORTS = ("weight", "bias", "recurrent_weight")
_FLOAT_PARAMETER_PORTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                          "BatchNormalization": (1, 2)}


class GraphModule(nn.Module):
    """The torch module of an hnnx ONNX graph (float, or ``tianjicx`` fake-quant).

    ``forward(*inputs)`` takes the graph inputs in order (tensors or arrays, ``[N, ...]`` or
    ``[T, N, ...]`` as the graph declares) and returns the graph outputs (one tensor, or a tuple).
    :meth:`run` takes and returns them by name. Parameters are keyed by a safe form of their
    initializer's name (:attr:`initializer_of` maps back).
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike) -> None:
        super().__init__()
        from hnnx.model import load
        from hnnx.quantization import output_scales, quantized_as

        if not isinstance(model, onnx.ModelProto):
            model = load(model)
        form = quantized_as(model)
        if form == "tianjicx/int":
            raise ModelError("the model is a tianjicx integer graph, which has no gradient: fine-tune its "
                             "fake-quant form (hnnx quantize --format fakequant) and re-quantize that")
        self.source = model
        self.fakequant = form == "tianjicx/fakequant"
        self.output_scales: dict[str, float] = {name: output_scales(model).get(name, 1.0)
                                                for name in (o.name for o in model.graph.output)}
        graph = model.graph
        initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in initializers]
        self.output_names = [o.name for o in graph.output]
        self._elem_types = _element_types(model)
        trainable = _fakequant_parameters(model, initializers) if self.fakequant \
            else _float_parameters(graph, initializers)
        self.bias_grids: dict[str, float] = _bias_grids(model, trainable) if self.fakequant else {}
        """Initializer name → the integer grid step of a fake-quant layer's bias."""
        self.initializer_of: dict[str, str] = {}
        """Parameter or buffer key → initializer name."""
        self._key_of: dict[str, str] = {}
        self.parameters_dict = nn.ParameterDict()
        for index, (name, array) in enumerate(initializers.items()):
            key = _key(name, index)
            self.initializer_of[key], self._key_of[name] = name, key
            value = as_torch(array)
            if name in trainable:
                self.parameters_dict[key] = nn.Parameter(value.clone())
            else:
                self.register_buffer(f"constant_{key}", value)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ops.ONNX_OPSET)
        self._nodes: list[tuple[list[str], list[str], Kernel]] = []
        for node in graph.node:
            label = node.name or node.output[0]
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise ModelError(f"node {label!r}: {node.op_type} with a subgraph has no trainable form")
            input_types = tuple(self._elem_types.get(name, 0) for name in node.input)
            if node.domain == ops.DOMAIN:
                kernel = hnnx_kernel(node, input_types)
            elif node.domain in ("", "ai.onnx"):
                kernel = build_kernel(node, NodeContext(opset, input_types, len(node.output)))
            else:
                raise ModelError(f"node {label!r}: op {node.domain}.{node.op_type} has no trainable torch form")
            self._nodes.append((list(node.input), list(node.output), kernel))

    # ------------------------------------------------------------------ running
    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != len(self.input_names):
            raise DataError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                            f"got {len(inputs)}")
        outputs = self.run(dict(zip(self.input_names, inputs)))
        values = tuple(outputs[name] for name in self.output_names)
        return values[0] if len(values) == 1 else values

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The graph on ``feeds`` (graph input name → tensor or array); returns ``outputs`` (default:
        the graph outputs; any intermediate tensor may be named) by name."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise DataError(f"no value for graph input {missing[0]!r}")
        values: dict[str, Any] = {"": None}
        for name in self.input_names:
            values[name] = self._input_tensor(name, feeds[name])
        for name, key in self._key_of.items():
            values[name] = self.parameter_value(name) if key in self.parameters_dict else \
                getattr(self, f"constant_{key}")
        for inputs, names, kernel in self._nodes:
            results = kernel([values[name] for name in inputs])
            for name, result in zip(names, results):
                if name:
                    values[name] = result
        wanted = list(outputs) if outputs is not None else self.output_names
        unknown = [name for name in wanted if name not in values]
        if unknown:
            raise DataError(f"the graph has no tensor {unknown[0]!r}")
        return {name: values[name] for name in wanted}

    def real_outputs(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        """The graph outputs times their real value per unit (``hnnx.output_scale`` of a quantized
        model, 1 otherwise): what a loss compares with labels or a float teacher."""
        outputs = self.run(dict(zip(self.input_names, inputs)))
        return tuple(outputs[name] * self.output_scales[name] if self.output_scales[name] != 1.0 else outputs[name]
                     for name in self.output_names)

    def parameter_value(self, initializer: str) -> torch.Tensor:
        """The value the graph computes with for trainable ``initializer``: the parameter itself, or
        (a fake-quant bias) the parameter on its integer grid, straight through."""
        value = self.parameters_dict[self._key_of[initializer]]
        grid = self.bias_grids.get(initializer)
        if grid is None:
            return value
        units = value / grid
        mask = ((units >= INT32_RANGE[0]) & (units <= INT32_RANGE[1])).to(value.dtype)
        return straight_through(units, torch.clamp(torch.round(units), *INT32_RANGE), mask) * grid

    def _input_tensor(self, name: str, value: Any) -> torch.Tensor:
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        elem = self._elem_types.get(name, onnx.TensorProto.FLOAT)
        if elem == onnx.TensorProto.INT64:
            return tensor.to(torch.int64)
        return tensor.to(torch.float32) if tensor.dtype != torch.float32 else tensor

    # ------------------------------------------------------------------ parameters
    def trainable_initializers(self) -> list[str]:
        """The initializers that train, in graph order."""
        return [self.initializer_of[key] for key in self.parameters_dict]

    def parameter_units(self) -> dict[str, float]:
        """Parameter key → the magnitude its steps are measured in: the largest ``|w|`` of its layer's
        weight (a bias takes its layer's), so a step size relative to it moves ANN weights (real
        units) and SNN weights (integer current units) alike."""
        units = {}
        for key, parameter in self.parameters_dict.items():
            name = self.initializer_of[key]
            partner = _layer_weight(self.source.graph, name, self._key_of)
            reference = self.parameters_dict[partner] if partner in self.parameters_dict else parameter
            magnitude = float(reference.detach().abs().max()) if reference.numel() else 0.0
            units[key] = magnitude if magnitude > 0 else 1.0
        return units

    def write_back(self) -> onnx.ModelProto:
        """A copy of the source model with every trainable initializer set to the module's value (a
        fake-quant bias: on its grid). Nodes, names, attributes, metadata and function bodies are
        those of the source."""
        model = onnx.ModelProto()
        model.CopyFrom(self.source)
        with torch.no_grad():
            for init in model.graph.initializer:
                key = self._key_of[init.name]
                if key not in self.parameters_dict:
                    continue
                value = self.parameter_value(init.name).detach().cpu().numpy()
                dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
                init.CopyFrom(numpy_helper.from_array(value.astype(dtype).reshape(tuple(init.dims)), init.name))
        return model


def to_torch(model: onnx.ModelProto | str | os.PathLike) -> GraphModule:
    """The trainable :class:`GraphModule` of ``model`` (a ModelProto or a path)."""
    return GraphModule(model)


# --------------------------------------------------------------------------- which initializers train
def _float_parameters(graph: onnx.GraphProto, initializers: Mapping[str, np.ndarray]) -> set[str]:
    producers = {out: node for node in graph.node for out in node.output}
    names: set[str] = set()

    def floating(name: str) -> bool:
        return name in initializers and initializers[name].dtype.kind == "f"

    for node in graph.node:
        if node.domain == ops.DOMAIN:
            decl = ops.declaration(node.op_type)
            names |= {name for port, name in zip(decl.inputs, node.input)
                      if port.name in _HNNX_PARAMETER_PORTS and floating(name)}
        elif node.op_type in _FLOAT_PARAMETER_PORTS:
            names |= {node.input[i] for i in _FLOAT_PARAMETER_PORTS[node.op_type]
                      if i < len(node.input) and floating(node.input[i])}
        elif node.op_type == "Add":
            for mine, other in ((0, 1), (1, 0)):
                producer = producers.get(node.input[other])
                if floating(node.input[mine]) and producer is not None and producer.op_type in ("MatMul", "Conv"):
                    names.add(node.input[mine])
    return names


def _fakequant_parameters(model: onnx.ModelProto, initializers: Mapping[str, np.ndarray]) -> set[str]:
    graph = model.graph
    names = {node.input[0] for node in graph.node
             if node.op_type == "QuantizeLinear" and node.input[0] in initializers
             and initializers[node.input[0]].dtype.kind == "f"}
    names |= set(_fakequant_biases(graph, names))
    return names


def _fakequant_biases(graph: onnx.GraphProto, sources: set[str]) -> dict[str, str]:
    """Bias constant → the accumulator tensor it is added to, for every ``Add(acc, bias)`` whose
    ``acc`` is a Conv/MatMul of a fake-quantized weight (a source in ``sources``)."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name for init in graph.initializer}

    def weight_source(tensor: str) -> str | None:
        dq = producers.get(tensor)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in sources else None

    biases = {}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or node.input[1] not in initializers:
            continue
        layer = producers.get(node.input[0])
        if layer is not None and layer.op_type in ("Conv", "MatMul") and weight_source(layer.input[1]) is not None:
            biases[node.input[1]] = node.input[0]
    return biases


def _bias_grids(model: onnx.ModelProto, trainable: set[str]) -> dict[str, float]:
    """Each fake-quant bias's grid step: the value per unit of the accumulator it joins, as the
    re-quantization reads it (:class:`hnnx.quantization.integerize.FakeQuantIntegerizer`)."""
    from hnnx.passes import import_graph
    from hnnx.quantization.integerize import FakeQuantIntegerizer

    analysis = FakeQuantIntegerizer(import_graph(model))
    analysis.run()
    grids = {}
    for bias, accumulator in _fakequant_biases(model.graph, trainable).items():
        if accumulator not in analysis.ints:
            raise ModelError(f"bias {bias!r}: its accumulator {accumulator!r} is not an integer tensor of the "
                             f"fake-quant graph")
        grids[bias] = analysis.ints[accumulator].fake
    return grids


def _layer_weight(graph: onnx.GraphProto, name: str, key_of: Mapping[str, str]) -> str | None:
    """The parameter key of the weight in the layer that ``name`` is the bias of, if any."""
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] == name:
            return _source_key(node.input[1], producers, key_of)
        if node.op_type == "BatchNormalization" and len(node.input) > 2 and node.input[2] == name:
            return key_of.get(node.input[1])
        if node.op_type == "Add" and name in node.input:
            other = node.input[1] if node.input[0] == name else node.input[0]
            layer = producers.get(other)
            if layer is not None and layer.op_type in ("Conv", "MatMul"):
                return _source_key(layer.input[1], producers, key_of)
    return None


def _source_key(tensor: str, producers: Mapping[str, onnx.NodeProto], key_of: Mapping[str, str]) -> str | None:
    """The parameter key of a layer's weight: the initializer itself or, behind a fake-quant pair, its source."""
    dq = producers.get(tensor)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            tensor = q.input[0]
    return key_of.get(tensor)


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every tensor shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an untyped graph still runs; integer nodes then assume int32
        inferred = model
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _key(name: str, index: int) -> str:
    """A ParameterDict key for initializer ``name`` (no dots; unique by its index)."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}_{index}"


__all__ = ["GraphModule", "to_torch"]
