"""Folding inference-mode BatchNormalization into the preceding Conv, Gemm or MatMul."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from hnnx.passes.manager import graph_pass


@graph_pass
def fold_batchnorm(graph: gs.Graph) -> bool:
    """Fold ``BatchNormalization`` (eval statistics) into the layer that feeds it.

    With ``γ' = scale / sqrt(var + ε)``: Conv ``W' = W·γ'`` per output channel and
    ``b' = (b − mean)·γ' + B``; Gemm/MatMul (2-D, channels last) scale the output
    columns the same way. A BN whose input has other consumers, non-constant
    parameters, or another producer is left as it is. ``scale = 1, B = 0`` (a
    non-affine BN as exported) folds the same way.
    """
    changed = False
    for bn in [node for node in graph.nodes if node.op == "BatchNormalization"]:
        x = bn.inputs[0]
        if len(x.inputs) != 1 or len(x.outputs) != 1 or x in graph.outputs or len(bn.outputs) != 1:
            continue
        params = bn.inputs[1:5]
        if len(params) != 4 or not all(isinstance(p, gs.Constant) for p in params):
            continue
        scale, shift, mean, var = (p.values.astype(np.float64) for p in params)
        gamma = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        offset = shift - mean * gamma  # BN(y) = y·γ' + offset
        layer = x.inputs[0]
        fold = {"Conv": _fold_into_conv, "Gemm": _fold_into_gemm, "MatMul": _fold_into_matmul}.get(layer.op)
        last = fold(graph, layer, gamma, offset) if fold is not None else None
        if last is not None:  # the node that now computes BN's output
            last.outputs = list(bn.outputs)
            bn.outputs.clear()
            bn.inputs.clear()
            changed = True
    return changed


def _fold_into_conv(graph: gs.Graph, conv: gs.Node, gamma: np.ndarray, offset: np.ndarray) -> gs.Node | None:
    weight = conv.inputs[1]
    if not isinstance(weight, gs.Constant) or weight.values.shape[0] != gamma.shape[0]:
        return None
    w = weight.values.astype(np.float64)
    bias = conv.inputs[2].values.astype(np.float64) if len(conv.inputs) > 2 else np.zeros(w.shape[0])
    if len(conv.inputs) > 2 and not isinstance(conv.inputs[2], gs.Constant):
        return None
    shape = (-1,) + (1,) * (w.ndim - 1)
    conv.inputs[1] = gs.Constant(f"{weight.name}_bnfold", (w * gamma.reshape(shape)).astype(weight.values.dtype))
    new_bias = (bias * gamma + offset).astype(weight.values.dtype)
    bias_tensor = gs.Constant(f"{conv.name or weight.name}_bias_bnfold", new_bias)
    if len(conv.inputs) > 2:
        conv.inputs[2] = bias_tensor
    else:
        conv.inputs.append(bias_tensor)
    return conv


def _fold_into_gemm(graph: gs.Graph, gemm: gs.Node, gamma: np.ndarray, offset: np.ndarray) -> gs.Node | None:
    weight = gemm.inputs[1]
    if not isinstance(weight, gs.Constant) or gemm.attrs.get("transA", 0):
        return None
    w = weight.values.astype(np.float64)
    trans_b = bool(gemm.attrs.get("transB", 0))
    if (w.shape[0] if trans_b else w.shape[1]) != gamma.shape[0]:
        return None
    alpha, beta = float(gemm.attrs.get("alpha", 1.0)), float(gemm.attrs.get("beta", 1.0))
    c = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    if c is not None and not isinstance(c, gs.Constant):
        return None
    bias = np.broadcast_to(c.values.astype(np.float64), gamma.shape) if c is not None else np.zeros(gamma.shape)
    w = w * (gamma[:, None] if trans_b else gamma[None, :])
    gemm.inputs[1] = gs.Constant(f"{weight.name}_bnfold", w.astype(weight.values.dtype))
    new_bias = (beta * bias * gamma + offset).astype(weight.values.dtype)
    bias_tensor = gs.Constant(f"{gemm.name or weight.name}_bias_bnfold", new_bias)
    if c is not None:
        gemm.inputs[2] = bias_tensor
    else:
        gemm.inputs.append(bias_tensor)
    gemm.attrs["alpha"], gemm.attrs["beta"] = alpha, 1.0
    return gemm


def _fold_into_matmul(graph: gs.Graph, matmul: gs.Node, gamma: np.ndarray, offset: np.ndarray) -> gs.Node | None:
    weight = matmul.inputs[1]
    if not isinstance(weight, gs.Constant) or weight.values.ndim != 2 or weight.values.shape[1] != gamma.shape[0]:
        return None
    x = matmul.inputs[0]
    if x.shape is None or len(x.shape) != 2:
        return None  # BatchNormalization's channel axis is 1: only 2-D MatMul outputs have channels last
    w = weight.values.astype(np.float64) * gamma[None, :]
    matmul.inputs[1] = gs.Constant(f"{weight.name}_bnfold", w.astype(weight.values.dtype))
    product = gs.Variable(f"{matmul.outputs[0].name}_scaled", dtype=matmul.outputs[0].dtype)
    bias = gs.Constant(f"{matmul.name or weight.name}_bias_bnfold", offset.astype(weight.values.dtype))
    add = gs.Node("Add", name=f"{matmul.name or weight.name}_bnfold_add", inputs=[product, bias])
    matmul.outputs = [product]
    graph.nodes.append(add)
    return add


@graph_pass
def decompose_batchnorm(graph: gs.Graph) -> bool:
    """Turn each inference-mode ``BatchNormalization`` left after :func:`fold_batchnorm` (one that
    follows no foldable layer, as in pre-activation nets: BN → ReLU → Conv) into its
    per-channel affine ``Add(Mul(x, scale), shift)``.

    With ``γ' = gamma / sqrt(var + ε)``: ``scale = γ'`` and ``shift = beta − mean·γ'``, both
    constants of shape ``[C, 1, …, 1]`` (channel axis 1 of an input of known rank ≥ 2). For
    BN node ``bn`` the nodes are ``bn.mul`` and ``bn.add``, the constants ``bn.scale`` and
    ``bn.shift``, the product ``bn.scaled``; the Add writes the BN's output tensor. A BN with
    non-constant parameters, training outputs or an input of unknown rank is left as it is.
    """
    changed = False
    standard = (None, "", "ai.onnx")
    for bn in [node for node in graph.nodes if node.op == "BatchNormalization" and node.domain in standard]:
        if not bn.inputs:  # folded into its layer by fold_batchnorm, awaiting the cleanup
            continue
        x, params = bn.inputs[0], bn.inputs[1:5]
        if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0) or x.shape is None or len(x.shape) < 2:
            continue
        if len(params) != 4 or not all(isinstance(p, gs.Constant) for p in params):
            continue
        gamma, beta, mean, var = (p.values.astype(np.float64) for p in params)
        factor = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        shape = (-1,) + (1,) * (len(x.shape) - 2)
        dtype = params[0].values.dtype
        base = bn.name or bn.outputs[0].name
        scale = gs.Constant(f"{base}.scale", factor.reshape(shape).astype(dtype))
        shift = gs.Constant(f"{base}.shift", (beta - mean * factor).reshape(shape).astype(dtype))
        scaled = gs.Variable(f"{base}.scaled", dtype=bn.outputs[0].dtype, shape=x.shape)
        graph.nodes.append(gs.Node("Mul", name=f"{base}.mul", inputs=[x, scale], outputs=[scaled]))
        graph.nodes.append(gs.Node("Add", name=f"{base}.add", inputs=[scaled, shift], outputs=list(bn.outputs)))
        bn.inputs.clear()
        bn.outputs.clear()
        changed = True
    return changed
