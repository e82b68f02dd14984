"""Hybrid Units — the ANN↔SNN converters of HNN (Zhao et al., Nat. Commun. 2022).

``hnnx.A2S`` turns an ANN activation ``[N, ...]`` into a spike/time sequence
``[T, N, ...]``; ``hnnx.S2A`` turns a spike sequence ``[T, N, ...]`` back into ANN
values. Time is axis 0 (the original HUs put time last).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

from hnnx.errors import NodeError
from hnnx.ops.arrays import FLOAT, INT64, FunctionBody, NumpyOps, OnnxOps
from hnnx.ops.declare import (NO_TIME, TIME_MAJOR, Attribute, NodeView, OpDeclaration, Port, TypeConstraint,
                              port_key)

GOLDEN = 0x9E3779B9
"""Added to the seed before hashing, so seed 0 is not the hash's fixed point."""


# ---------------------------------------------------------------------------- generator
def mix32(xp: Any, z: Any) -> Any:
    """The 32-bit integer hash ``lowbias32`` (uint32, wrapping)::

        z ^= z >> 16;  z *= 0x7FEB352D;  z ^= z >> 15;  z *= 0x846CA68B;  z ^= z >> 16
    """
    z = xp.u32_xor(z, xp.u32_shr(z, 16))
    z = xp.u32_mul(z, xp.u32(0x7FEB352D))
    z = xp.u32_xor(z, xp.u32_shr(z, 15))
    z = xp.u32_mul(z, xp.u32(0x846CA68B))
    return xp.u32_xor(z, xp.u32_shr(z, 16))


def random_bits(xp: Any, seed: Any, steps: Any, elements: Any) -> Any:
    """Counter-based random words ``r[t, i]``, ``[T, M]`` uint32.

    ``seed``: uint32 scalar; ``steps``: ``0..T−1`` and ``elements``: ``0..M−1`` as uint32.
    ``key = mix32(seed + 0x9E3779B9)``; ``r = mix32(mix32(key ^ t) ^ mix32(i))``. The
    uniform of a draw is ``u = (r >> 8) · 2^−24`` in [0, 1).
    """
    key = mix32(xp, xp.u32_add(seed, xp.u32(GOLDEN)))
    per_step = mix32(xp, xp.u32_xor(key, steps))
    per_element = mix32(xp, elements)
    return mix32(xp, xp.u32_xor(xp.unsqueeze(per_step, 1), xp.unsqueeze(per_element, 0)))


def numpy_random_bits(seed: int, steps: int, elements: int) -> np.ndarray:
    """:func:`random_bits` evaluated in numpy: ``[steps, elements]`` uint32."""
    xp = NumpyOps(False, {})
    return random_bits(xp, np.uint32(seed), np.arange(steps, dtype=np.uint32), np.arange(elements, dtype=np.uint32))


def numpy_uniform_field(seed: int, steps: int, elements: int) -> np.ndarray:
    """The uniforms ``u[t, i]`` in [0, 1) of :func:`random_bits`, ``[steps, elements]`` float32."""
    return NumpyOps(False, {}).u32_to_unit(numpy_random_bits(seed, steps, elements))


# ---------------------------------------------------------------------------- A2S
class A2S(OpDeclaration):
    """ANN→SNN Hybrid Unit: ``x [N, ...]`` → ``y [T, N, ...]`` with ``T = steps``.

    Coding (per sample n, element i, step t):

    * ``direct``: ``y[t] = x`` (the same value every step);
    * ``rate``: ``y[t, n, i] = 1 if u[t, i] < p[n, i] else 0``, a Bernoulli spike train with
      probability ``p``. ``normalize = "minmax"``: ``p = (x − min) / (max − min)`` over the
      elements of each sample (0 where a sample is constant); ``"clip"``: ``p = clip(x, 0, 1)``.
      ``u[t, i]`` is a counter-based uniform in [0, 1) from ``seed``, step ``t`` and element
      index ``i`` within a sample: ``key = mix32(seed + 0x9E3779B9)``,
      ``u = (mix32(mix32(key ^ t) ^ mix32(i)) >> 8) · 2^−24`` with ``mix32`` the
      lowbias32 hash (``z ^= z>>16; z *= 0x7FEB352D; z ^= z>>15; z *= 0x846CA68B; z ^= z>>16``,
      uint32). Every executor draws the same numbers, and a sample's spikes do not depend
      on its batch;
    * ``learnable``: ``y[t] = weight[t]·x + bias[t]`` (inputs ``weight``/``bias`` of shape ``[T]``).

    Then ``activation`` (``relu`` or none) and the precision ``converter``: ``identity``;
    ``sign`` (−1/0/1); ``round`` (half to even, clamped to signed ``bits``-bit integers).
    Training passes gradients straight through rate sampling, sign and round (inside the range).

    ``mode = "integer"`` (int8 or int32 in, the same type out; direct and rate coding,
    ``normalize = "minmax"``): rate coding fires exactly when
    ``(r >> 8)·(max − min) < (x − min)·2^24`` in int64, the integer form of ``u < p``, so a
    quantized graph makes the same decision as the chip.
    """

    name = "A2S"
    inputs = (
        Port("x", "ANN activation, [N, ...]", time=NO_TIME),
        Port("weight", "learnable coding: per-step gain, [T]", optional=True, time=NO_TIME),
        Port("bias", "learnable coding: per-step offset, [T]", optional=True, time=NO_TIME),
    )
    outputs = (Port("y", "coded sequence, [T, N, ...]", time=TIME_MAJOR),)
    type_constraints = (TypeConstraint("T", ("tensor(float)", "tensor(int8)", "tensor(int32)"),
                                       "float32 in float mode, int8 or int32 in integer mode"),)
    attributes = (
        Attribute("steps", int, None, "number of time steps T (≥ 1)", required=True),
        Attribute("mode", str, "float", "numeric mode: `float` or `integer`", choices=("float", "integer")),
        Attribute("coding", str, "direct", "`direct`, `rate` or `learnable`", choices=("direct", "rate", "learnable")),
        Attribute("normalize", str, "minmax", "rate coding: `minmax` (per sample) or `clip` to [0, 1]",
                  choices=("minmax", "clip")),
        Attribute("seed", int, 0, "rate coding: generator seed in [0, 2^32)"),
        Attribute("activation", str, "none", "non-linearity after coding: `none` or `relu`",
                  choices=("none", "relu")),
        Attribute("converter", str, "identity", "precision converter: `identity`, `sign` or `round`",
                  choices=("identity", "sign", "round")),
        Attribute("bits", int, 8, "`round` converter: signed integer width (2–24)"),
    )

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        if attrs["steps"] < 1:
            raise NodeError(node, f"A2S attribute 'steps' must be ≥ 1, got {attrs['steps']}")
        if not 0 <= attrs["seed"] < 2**32:
            raise NodeError(node, f"A2S attribute 'seed' must lie in [0, 2^32), got {attrs['seed']}")
        if not 2 <= attrs["bits"] <= 24:
            raise NodeError(node, f"A2S attribute 'bits' must lie in [2, 24], got {attrs['bits']}")
        if attrs["mode"] == "integer" and (attrs["coding"] == "learnable" or
                                           (attrs["coding"] == "rate" and attrs["normalize"] != "minmax")):
            raise NodeError(node, "integer-mode A2S supports direct coding and rate coding with minmax "
                                  "normalisation only")

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        _check_mode_type(view, elem_types[0])

    @classmethod
    def check_ports(cls, view: NodeView) -> None:
        _check_learnable_ports(view, "coding", "[T]")

    @classmethod
    def structure(cls, view: NodeView) -> str:
        a = view.attrs
        parts = (["int"] if a["mode"] == "integer" else []) + [a["coding"]]
        if a["coding"] == "rate":
            parts.append(a["normalize"])
        if a["activation"] != "none":
            parts.append(a["activation"])
        if a["converter"] != "identity":
            parts.append(a["converter"] + (str(a["bits"]) if a["converter"] == "round" else ""))
        return "-".join(parts) + "-" + port_key(view)

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        x = shapes[0]
        return [None if x is None else [view.attrs["steps"], *x]]

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        return view.attrs["coding"] == "rate"

    @classmethod
    def step(cls, view: NodeView, x: np.ndarray, t: int, weight: np.ndarray | None = None,
             bias: np.ndarray | None = None) -> np.ndarray:
        """The coded value at absolute step ``t`` (numpy): ``x [N, ...]`` → ``y_t [N, ...]`` in x's type.

        The same equations as the multi-step op (rate coding draws the generator's numbers of
        step ``t``), so stepping ``t = 0 … T−1`` gives the reference's ``y`` exactly.
        """
        _check_array_type(view, x)
        steps = view.attrs["steps"]
        if not 0 <= t < steps:
            raise NodeError(view.name, f"A2S step {t} is outside its {steps} steps")
        xp = NumpyOps(view.attrs["mode"] == "integer", view.attrs)
        batch, sample_shape = x.shape[0], tuple(x.shape[1:])
        elements = math.prod(sample_shape)

        def field(_: Any) -> np.ndarray:
            return random_bits(xp, np.uint32(view.attrs["seed"]), np.array([t], np.uint32),
                               np.arange(elements, dtype=np.uint32))

        coded = _a2s_core(view, xp, x.reshape(batch, elements), None if weight is None else weight[t:t + 1],
                          None if bias is None else bias[t:t + 1], field, lambda x1: x1)
        return coded.reshape(batch, *sample_shape)

    @classmethod
    def reference(cls, view: NodeView, x: np.ndarray, weight: np.ndarray | None = None,
                  bias: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        _check_array_type(view, x)
        return (_a2s_eager(view, NumpyOps(view.attrs["mode"] == "integer", view.attrs), x, weight, bias,
                           numpy_random_bits),)

    @classmethod
    def torch_forward(cls, view: NodeView, x: Any, weight: Any = None, bias: Any = None) -> tuple[Any, ...]:
        import torch

        from hnnx.ops.torch_ops import TorchOps

        _torch_float_only(view)

        def field(seed: int, steps: int, elements: int) -> Any:
            return torch.from_numpy(numpy_random_bits(seed, steps, elements).astype(np.int64)).to(x.device)

        return (_a2s_eager(view, TorchOps(False, view.attrs, x.device), x, weight, bias, field),)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        top = body.top
        xp = OnnxOps(top, integer=view.attrs["mode"] == "integer")
        x = body.input(0)
        shape = top.op("Shape", x)
        sample_shape = top.op("Slice", shape, body.literal_1d([1]), body.literal_1d([2**62]))
        elements = top.op("ReduceProd", sample_shape, keepdims=1)
        batch = top.op("Slice", shape, body.literal_1d([0]), body.literal_1d([1]))
        flat = top.op("Reshape", x, top.op("Concat", batch, elements, axis=0), allowzero=1)  # [N, M]
        steps = top.op("Reshape", body.attr_value("steps", "value_int"), body.literal_1d([1]))
        step_shape = top.op("Concat", steps, batch, elements, axis=0)

        def field(_: Any) -> str:
            seed = top.op("Cast", body.attr_value("seed", "value_int"), to=onnx.TensorProto.UINT32)
            zero, one = body.literal(0, INT64), body.literal(1, INT64)

            def counter(stop: str) -> str:
                return top.op("Cast", top.op("Range", zero, top.op("Squeeze", stop), one),
                              to=onnx.TensorProto.UINT32)

            return random_bits(xp, seed, counter(steps), counter(elements))

        def expand(x1: str) -> str:
            return top.op("Expand", x1, step_shape)

        weight = body.input(1) if view.has_input(1) else None
        bias = body.input(2) if view.has_input(2) else None
        coded = _a2s_core(view, xp, flat, weight, bias, field, expand)
        body.set_output(0, top.op("Reshape", coded, top.op("Concat", steps, shape, axis=0), allowzero=1))


_FLOAT_TYPES = {onnx.TensorProto.FLOAT}
_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT32}


def _check_mode_type(view: NodeView, elem_type: int | None) -> None:
    if not elem_type:
        return
    allowed = _INTEGER_TYPES if view.attrs["mode"] == "integer" else _FLOAT_TYPES
    if elem_type not in allowed:
        names = " or ".join(sorted(onnx.TensorProto.DataType.Name(t).lower() for t in allowed))
        raise NodeError(view.name, f"{view.name.split('(')[0]} in {view.attrs['mode']} mode needs {names} input, "
                                   f"got {onnx.TensorProto.DataType.Name(elem_type).lower()}")


def _check_array_type(view: NodeView, x: Any) -> None:
    _check_mode_type(view, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype)))


def _check_learnable_ports(view: NodeView, kind: str, weight_shape: str) -> None:
    """Learnable coding/decoding needs its weight input; the other kinds take none."""
    learnable = view.attrs[kind] == "learnable"
    if learnable and not view.has_input(1):
        raise NodeError(view.name, f"{kind} 'learnable' needs input 1 (weight, {weight_shape})")
    if not learnable and (view.has_input(1) or view.has_input(2)):
        raise NodeError(view.name, f"{kind} {view.attrs[kind]!r} takes no weight/bias inputs")


def _torch_float_only(view: NodeView) -> None:
    if view.attrs["mode"] != "float":
        raise NodeError(view.name, "integer mode runs in ONNX and numpy; torch trains float graphs")


def _a2s_eager(view: NodeView, xp: Any, x: Any, weight: Any, bias: Any,
               field: Callable[[int, int, int], Any]) -> Any:
    """A2S in an eager namespace (numpy or torch): flatten samples, code, restore shape."""
    steps = view.attrs["steps"]
    for port, given in (("weight", weight), ("bias", bias)):
        if given is not None and tuple(given.shape) != (steps,):
            raise NodeError(view.name, f"A2S {port} must have shape [{steps}] (one per step), "
                                       f"got {list(given.shape)}")
    batch, sample_shape = x.shape[0], tuple(x.shape[1:])
    elements = math.prod(sample_shape)
    flat = x.reshape(batch, elements)
    coded = _a2s_core(view, xp, flat, weight, bias,
                      lambda _: field(view.attrs["seed"], steps, elements),
                      lambda x1: xp.expand_time(x1, steps))
    return coded.reshape(steps, batch, *sample_shape)


def _a2s_core(view: NodeView, xp: Any, flat: Any, weight: Any, bias: Any,
              field: Callable[[Any], Any], expand: Callable[[Any], Any]) -> Any:
    """The A2S equations on ``flat [N, M]`` → ``[T, N, M]`` (see the A2S docstring)."""
    a = view.attrs
    x1 = xp.unsqueeze(flat, 0)  # [1, N, M]
    if a["coding"] == "direct":
        y = expand(x1)
    elif a["coding"] == "learnable":
        y = xp.mul(xp.rows3(weight), x1)
        if bias is not None:
            y = xp.add(y, xp.rows3(bias))
    elif xp.integer:
        # u < p with u = r24 / 2^24 and p = (x − min)/(max − min), cross-multiplied in int64.
        wide = xp.to_int64(flat)
        low, high = xp.min_axis1(wide), xp.max_axis1(wide)
        scaled = xp.mul(xp.sub(wide, low), xp.int64(1 << 24))
        draws = xp.unsqueeze(xp.u32_top24(field(None)), 1)  # [T, 1, M]
        fired = xp.less(xp.mul(draws, xp.unsqueeze(xp.sub(high, low), 0)), xp.unsqueeze(scaled, 0))
        y = xp.cast_like(fired, flat)
    else:
        if a["normalize"] == "minmax":
            low, high = xp.min_axis1(flat), xp.max_axis1(flat)
            spread = xp.greater(high, low)
            safe_range = xp.where(spread, xp.sub(high, low), xp.literal(1.0))
            p = xp.where(spread, xp.div(xp.sub(flat, low), safe_range), xp.literal(0.0))
        else:
            p = xp.clamp(flat, 0, 1)
        u = xp.unsqueeze(xp.u32_to_unit(field(None)), 1)  # [T, 1, M]
        y = xp.bernoulli(xp.unsqueeze(p, 0), u)
    if a["activation"] == "relu":
        y = xp.relu(y)
    if a["converter"] == "sign":
        y = xp.sign(y)
    elif a["converter"] == "round":
        limit = 1 << (a["bits"] - 1)
        y = xp.clamp_like(y, -limit, limit - 1) if xp.integer else xp.round_clamp(y, -limit, limit - 1)
    return y


# ---------------------------------------------------------------------------- S2A
@dataclass
class S2AState:
    """What an S2A node carries between steps: ``buffer [window, N, ...]`` holds the steps of the
    current window fed so far (``global``: ``[1, N, ...]``, the running sum); ``filled``: steps in
    the buffer (``global``: steps fed); ``windows``: windows completed (selects the learnable row)."""

    buffer: np.ndarray
    filled: int = 0
    windows: int = 0


class S2A(OpDeclaration):
    """SNN→ANN Hybrid Unit: spikes ``x [T, N, ...]`` → ``[T', N, ...]`` or ``[N, ...]``.

    The T steps are cut into ``T / window`` consecutive windows (T must be divisible).
    Inside each window j, with ``x_j[τ] = x[j·window + τ]`` and ``K = kernel`` (default
    ``window``), ``s = stride`` (default ``K``), ``L = floor((window + 2·padding − K)/s) + 1``
    outputs per window, output ``j·L + l`` is:

    * ``rate``: ``Σ_{k<K} x_j[l·s + k] / K`` — the firing rate in a sliding window;
      ``kernel = stride = window`` gives one rate per window;
    * ``learnable``: ``Σ_{k<K} weight[j, k]·x_j[l·s + k − padding] + bias[j]`` (terms outside
      the window are zero padding; a single weight/bias row is shared by every window);
    * ``global``: the mean over all T steps, output ``[N, ...]`` (no window).

    Then ``activation`` (``relu`` or none). Sums run in index order, so results are
    bit-identical across executors for spike inputs.

    ``mode = "integer"`` (int32 spikes in, ``rate`` and ``global`` decoding): the outputs are
    spike counts, the rates times ``K`` (or times T): integer graphs keep the scale ``1/K``
    outside the tensor.
    """

    name = "S2A"
    inputs = (
        Port("x", "spikes, [T, N, ...]", time=TIME_MAJOR),
        Port("weight", "learnable: kernels, [T / window, kernel] or [1, kernel]", optional=True, time=NO_TIME),
        Port("bias", "learnable: offsets, [T / window] or [1]", optional=True, time=NO_TIME),
    )
    outputs = (Port("y", "[T / window · L, N, ...], or [N, ...] for `global`", time=TIME_MAJOR),)
    type_constraints = (TypeConstraint("T", ("tensor(float)", "tensor(int32)"),
                                       "float32 in float mode, int32 in integer mode"),)
    attributes = (
        Attribute("decoding", str, "rate", "`rate` (windowed), `global` (mean over all steps) or `learnable`",
                  choices=("rate", "global", "learnable")),
        Attribute("mode", str, "float", "numeric mode: `float` (rates) or `integer` (spike counts)",
                  choices=("float", "integer")),
        Attribute("window", int, 1, "window length in steps; T must be a multiple"),
        Attribute("kernel", int, 0, "averaging/convolution kernel in steps; 0 = window"),
        Attribute("stride", int, 0, "kernel stride in steps; 0 = kernel"),
        Attribute("padding", int, 0, "learnable: zero padding on both sides of each window"),
        Attribute("activation", str, "none", "non-linearity: `none` or `relu`", choices=("none", "relu")),
    )

    @classmethod
    def validate(cls, attrs: dict[str, Any], node: str) -> None:
        if attrs["mode"] == "integer" and attrs["decoding"] == "learnable":
            raise NodeError(node, "integer-mode S2A supports rate and global decoding only")
        if attrs["decoding"] == "global":
            return
        window = attrs["window"]
        kernel = attrs["kernel"] or window
        stride = attrs["stride"] or kernel
        if window < 1 or kernel < 1 or stride < 1 or attrs["padding"] < 0:
            raise NodeError(node, f"S2A needs window, kernel, stride ≥ 1 and padding ≥ 0, got window={window} "
                                  f"kernel={kernel} stride={stride} padding={attrs['padding']}")
        if attrs["decoding"] == "rate" and attrs["padding"]:
            raise NodeError(node, "S2A padding applies to mode 'learnable' only")
        if kernel > window + 2 * attrs["padding"]:
            raise NodeError(node, f"S2A kernel {kernel} is longer than the (padded) window {window}")

    @classmethod
    def check_types(cls, view: NodeView, elem_types: list[int | None]) -> None:
        if view.attrs["mode"] == "integer":
            if elem_types[0] and elem_types[0] != onnx.TensorProto.INT32:
                raise NodeError(view.name, "S2A in integer mode needs int32 spikes")
        else:
            _check_mode_type(view, elem_types[0])

    @classmethod
    def check_ports(cls, view: NodeView) -> None:
        _check_learnable_ports(view, "decoding", "[T / window, kernel]")

    @classmethod
    def geometry(cls, attrs: dict[str, Any]) -> tuple[int, int, int, int, int]:
        """``(window, kernel, stride, padding, outputs per window L)``."""
        window = attrs["window"]
        kernel = attrs["kernel"] or window
        stride = attrs["stride"] or kernel
        padding = attrs["padding"]
        return window, kernel, stride, padding, (window + 2 * padding - kernel) // stride + 1

    @classmethod
    def structure(cls, view: NodeView) -> str:
        a = view.attrs
        parts = (["int"] if a["mode"] == "integer" else []) + [a["decoding"]]
        if a["decoding"] != "global":
            window, kernel, stride, padding, _ = cls.geometry(a)
            parts.append(f"w{window}k{kernel}s{stride}p{padding}")
        if a["activation"] != "none":
            parts.append(a["activation"])
        return "-".join(parts) + "-" + port_key(view)

    @classmethod
    def output_shapes(cls, view: NodeView, shapes: list[list[Any] | None]) -> list[list[Any] | None]:
        x = shapes[0]
        if x is None:
            return [None]
        if view.attrs["decoding"] == "global":
            return [list(x[1:])]
        window, *_, per_window = cls.geometry(view.attrs)
        return [[x[0] // window * per_window, *x[1:]]]

    @classmethod
    def output_time(cls, view: NodeView) -> list[str]:
        return [NO_TIME if view.attrs["decoding"] == "global" else TIME_MAJOR]

    @classmethod
    def integer_divisor(cls, view: NodeView, steps: int | None) -> int:
        """What an integer-mode output is the float output times: the kernel ``K`` (rate), or
        ``T = steps`` (global). Integer graphs carry ``1/divisor`` outside the tensor."""
        if view.attrs["decoding"] == "learnable":
            raise NodeError(view.name, "learnable S2A has no integer form")
        if view.attrs["decoding"] == "global":
            if steps is None:
                raise NodeError(view.name, "global S2A over an unknown number of steps")
            return steps
        return cls.geometry(view.attrs)[1]

    # ------------------------------------------------------------------ state and steps
    @classmethod
    def initial_state(cls, view: NodeView, shape: tuple[int, ...], dtype: Any = None) -> S2AState:
        """The state before step 0 for steps of shape ``shape`` (``[N, ...]``): an empty window
        (``global``: a zero running sum). ``dtype``: the spikes' type (default: the mode's)."""
        dtype = np.dtype(dtype or (np.int32 if view.attrs["mode"] == "integer" else np.float32))
        if view.attrs["decoding"] == "global":
            return S2AState(np.zeros((1, *shape), dtype))
        return S2AState(np.zeros((cls.geometry(view.attrs)[0], *shape), dtype))

    @classmethod
    def step(cls, view: NodeView, state: S2AState, x: np.ndarray, weight: np.ndarray | None = None,
             bias: np.ndarray | None = None) -> tuple[list[np.ndarray], S2AState]:
        """Feed one step ``x [N, ...]`` (numpy). Returns the outputs this step completes — the
        ``L`` outputs of a window when ``x`` is its last step, else none — and the next state.

        A window's outputs are computed by the same equations as the multi-step op, so stepping
        through T steps gives the reference's outputs exactly; ``global`` keeps a running sum
        (exact for spikes) whose mean :meth:`finish` returns.
        """
        if view.attrs["decoding"] == "global":
            total = state.buffer[0] + x if view.attrs["mode"] == "float" else np.add(state.buffer[0], x, dtype=x.dtype)
            return [], S2AState(total[None], state.filled + 1, state.windows)
        buffer = state.buffer.copy()
        buffer[state.filled] = x
        filled = state.filled + 1
        window = cls.geometry(view.attrs)[0]
        if filled < window:
            return [], S2AState(buffer, filled, state.windows)
        xp = NumpyOps(view.attrs["mode"] == "integer", view.attrs)
        row = None if weight is None else weight[min(state.windows, weight.shape[0] - 1)][None]
        offset = None if bias is None else bias[min(state.windows, bias.shape[0] - 1)][None]
        rest = buffer.shape[1:]
        pooled = _s2a_core(view, xp, buffer.reshape(1, window, math.prod(rest)), row, offset)  # [1, L, M]
        outputs = [column.reshape(rest) for column in pooled[0]]
        return outputs, S2AState(np.zeros_like(buffer), 0, state.windows + 1)

    @classmethod
    def finish(cls, view: NodeView, state: S2AState) -> list[np.ndarray]:
        """The outputs due after the last step: ``global`` decoding's mean (integer: the spike
        count) over the steps fed; none for windowed decodings. NodeError on a partial window."""
        if view.attrs["decoding"] != "global":
            if state.filled:
                raise NodeError(view.name, f"S2A stopped inside a window ({state.filled} of "
                                           f"{cls.geometry(view.attrs)[0]} steps)")
            return []
        if state.filled == 0:
            raise NodeError(view.name, "S2A global rate of an empty sequence (T = 0)")
        total = state.buffer[0]
        if view.attrs["mode"] == "integer":
            rate = total
        else:
            rate = np.divide(total, np.float32(state.filled))
        return [np.maximum(rate, rate.dtype.type(0)) if view.attrs["activation"] == "relu" else rate]

    @classmethod
    def reference(cls, view: NodeView, x: np.ndarray, weight: np.ndarray | None = None,
                  bias: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        if view.attrs["mode"] == "integer" and x.dtype != np.int32:
            raise NodeError(view.name, f"S2A in integer mode needs int32 spikes, got {x.dtype}")
        if view.attrs["mode"] == "float":
            _check_array_type(view, x)
        return (_s2a_eager(view, NumpyOps(view.attrs["mode"] == "integer", view.attrs), x, weight, bias),)

    @classmethod
    def torch_forward(cls, view: NodeView, x: Any, weight: Any = None, bias: Any = None) -> tuple[Any, ...]:
        from hnnx.ops.torch_ops import TorchOps

        _torch_float_only(view)
        return (_s2a_eager(view, TorchOps(False, view.attrs, x.device), x, weight, bias),)

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        top = body.top
        xp = OnnxOps(top, integer=view.attrs["mode"] == "integer")
        x = body.input(0)
        shape = top.op("Shape", x)
        rest = top.op("Slice", shape, body.literal_1d([1]), body.literal_1d([2**62]))
        if view.attrs["decoding"] == "global":
            steps = top.op("Cast", top.op("Slice", shape, body.literal_1d([0]), body.literal_1d([1])), to=FLOAT)
            total = top.op("ReduceSum", x, body.literal_1d([0]), keepdims=0)
            rate = total if xp.integer else xp.div(total, top.op("Squeeze", steps))
            body.set_output(0, xp.relu(rate) if view.attrs["activation"] == "relu" else rate)
            return
        window = cls.geometry(view.attrs)[0]
        elements = top.op("ReduceProd", rest, keepdims=1)
        windows = top.op("Reshape", x, top.op("Concat", body.literal_1d([-1, window]), elements, axis=0))
        weight = body.input(1) if view.has_input(1) else None
        bias = body.input(2) if view.has_input(2) else None
        pooled = _s2a_core(view, xp, windows, weight, bias)  # [num, L, M]
        body.set_output(0, top.op("Reshape", pooled, top.op("Concat", body.literal_1d([-1]), rest, axis=0)))


def _s2a_eager(view: NodeView, xp: Any, x: Any, weight: Any, bias: Any) -> Any:
    """S2A in an eager namespace (numpy or torch)."""
    steps, rest = x.shape[0], tuple(x.shape[1:])
    if view.attrs["decoding"] == "global":
        if steps == 0:
            raise NodeError(view.name, "S2A global rate of an empty sequence (T = 0)")
        total = x.sum(0, dtype=x.dtype) if xp.integer else x.sum(0)
        rate = total if xp.integer else xp.div(total, xp.literal(float(steps)))
        return xp.relu(rate) if view.attrs["activation"] == "relu" else rate
    window = S2A.geometry(view.attrs)[0]
    if steps % window or steps == 0:
        raise NodeError(view.name, f"S2A needs T to be a positive multiple of window {window}, got T = {steps}")
    windows = x.reshape(steps // window, window, math.prod(rest))
    kernel = S2A.geometry(view.attrs)[1]
    windows_count = steps // window
    if weight is not None and (weight.ndim != 2 or weight.shape[0] not in (1, windows_count)
                               or weight.shape[1] != kernel):
        raise NodeError(view.name, f"S2A weight must have shape [{windows_count} or 1, {kernel}] "
                                   f"(rows: windows, columns: kernel), got {list(weight.shape)}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] not in (1, windows_count)):
        raise NodeError(view.name, f"S2A bias must have shape [{windows_count} or 1], got {list(bias.shape)}")
    pooled = _s2a_core(view, xp, windows, weight, bias)
    return pooled.reshape(-1, *rest)


def _s2a_core(view: NodeView, xp: Any, windows: Any, weight: Any, bias: Any) -> Any:
    """The windowed S2A equations on ``windows [num, window, M]`` → ``[num, L, M]``."""
    window, kernel, stride, padding, per_window = S2A.geometry(view.attrs)
    columns = []
    for position in range(per_window):
        start = position * stride
        if view.attrs["decoding"] == "rate":
            total = xp.sum_axis1(xp.slice_axis1(windows, start, start + kernel), kernel)
            column = total if xp.integer else xp.div(total, xp.literal(float(kernel)))
        else:
            column = None
            for k in range(kernel):
                index = start + k - padding
                if 0 <= index < window:
                    term = xp.mul(xp.column3(weight, k), xp.slice_axis1(windows, index, index + 1))
                    column = term if column is None else xp.add(column, term)
            if column is None:  # the kernel lies entirely in the padding
                column = xp.mul(xp.slice_axis1(windows, 0, 1), xp.literal(0.0))
            if bias is not None:
                column = xp.add(column, xp.rows3(bias))
        columns.append(column)
    pooled = xp.concat_axis1(columns)
    return xp.relu(pooled) if view.attrs["activation"] == "relu" else pooled
