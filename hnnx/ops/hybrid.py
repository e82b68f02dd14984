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
from hnnx.ops.declare import (NO_TIME, TIME_MAJOR, Attribute, NodeView, OpDeclaration, Port, StateSpec,
                              TypeConstraint, UnknownDim, port_key)

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


def numpy_random_bits(seed: int, steps: int, elements: int, first: int = 0) -> np.ndarray:
    """:func:`random_bits` evaluated in numpy for steps ``first … first + steps − 1``:
    ``[steps, elements]`` uint32."""
    xp = NumpyOps(False, {})
    return random_bits(xp, np.uint32(seed), np.arange(first, first + steps, dtype=np.uint32),
                       np.arange(elements, dtype=np.uint32))


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

    A call may code a part of the sequence: inputs ``offset`` (default 0) and ``count`` (default
    ``steps − offset``) select steps ``offset … offset + count − 1`` (within ``[0, steps]``), so
    ``y`` is ``[count, N, ...]`` and equals those rows of the whole sequence; output ``end`` =
    ``offset + count`` is the next call's ``offset`` (the node's state).

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
        Port("offset", "absolute index of the first step coded, int64 scalar (default 0)", type="tensor(int64)",
             optional=True, time=NO_TIME),
        Port("count", "number of steps coded, int64 scalar (default steps − offset)", type="tensor(int64)",
             optional=True, time=NO_TIME),
    )
    outputs = (
        Port("y", "coded sequence, [T, N, ...] (T = count)", time=TIME_MAJOR),
        Port("end", "offset + count: the next call's offset, int64 scalar", type="tensor(int64)", optional=True,
             time=NO_TIME),
    )
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
        partial = view.has_input(3) or view.has_input(4)  # the number of steps is a value, not a shape
        return [None if x is None else [UnknownDim() if partial else view.attrs["steps"], *x], []][: view.n_outputs]

    @classmethod
    def emits_spikes(cls, view: NodeView) -> bool:
        return view.attrs["coding"] == "rate"

    @classmethod
    def repeated_step(cls, view: NodeView) -> tuple[int, dict[str, Any]] | None:
        """Direct coding of the whole sequence (no offset/count inputs): every step is the coded
        ``x``, which the node with ``steps = 1`` gives."""
        if view.attrs["coding"] != "direct" or view.has_input(3) or view.has_input(4):
            return None
        return view.attrs["steps"], {**view.attrs, "steps": 1}

    @classmethod
    def state_spec(cls, view: NodeView) -> tuple[StateSpec, ...]:
        """``offset``: the absolute index of the next step to code (input 3, output 1 ``end``; 0 at
        the start), a scalar."""
        return (StateSpec("offset", 3, 1, np.dtype(np.int64), 0, per_step=False,
                          doc="absolute index of the next step"),)

    @classmethod
    def step(cls, view: NodeView, x: np.ndarray, t: int, weight: np.ndarray | None = None,
             bias: np.ndarray | None = None) -> np.ndarray:
        """The coded value at absolute step ``t`` (numpy): ``x [N, ...]`` → ``y_t [N, ...]`` in x's type.

        The multi-step op's equations for the one step ``t`` (rate coding draws the generator's
        numbers of step ``t``), so stepping ``t = 0 … T−1`` gives the reference's ``y`` exactly.
        """
        if not 0 <= t < view.attrs["steps"]:
            raise NodeError(view.name, f"A2S step {t} is outside its {view.attrs['steps']} steps")
        return cls.reference(view, x, weight, bias, np.int64(t), np.int64(1))[0][0]

    @classmethod
    def reference(cls, view: NodeView, x: np.ndarray, weight: np.ndarray | None = None,
                  bias: np.ndarray | None = None, offset: np.ndarray | None = None,
                  count: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        _check_array_type(view, x)
        first, steps = _a2s_span(view, offset, count)
        y = _a2s_eager(view, NumpyOps(view.attrs["mode"] == "integer", view.attrs), x, weight, bias,
                       numpy_random_bits, first, steps)
        return (y, np.array(first + steps, np.int64))[: view.n_outputs]

    @classmethod
    def torch_forward(cls, view: NodeView, x: Any, weight: Any = None, bias: Any = None, offset: Any = None,
                      count: Any = None) -> tuple[Any, ...]:
        import torch

        from hnnx.ops.torch_ops import TorchOps

        _torch_float_only(view)
        first, steps = _a2s_span(view, offset, count)

        def field(seed: int, steps: int, elements: int, first: int) -> Any:
            return torch.from_numpy(numpy_random_bits(seed, steps, elements, first).astype(np.int64)).to(x.device)

        y = _a2s_eager(view, TorchOps(False, view.attrs, x.device), x, weight, bias, field, first, steps)
        return (y, torch.tensor(first + steps, dtype=torch.int64, device=x.device))[: view.n_outputs]

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
        first = top.op("Reshape", body.input(3), body.literal_1d([1])) if view.has_input(3) else body.literal_1d([0])
        if view.has_input(4):
            steps = top.op("Reshape", body.input(4), body.literal_1d([1]))
        else:
            steps = top.op("Sub", top.op("Reshape", body.attr_value("steps", "value_int"), body.literal_1d([1])), first)
        end = top.op("Add", first, steps)
        step_shape = top.op("Concat", steps, batch, elements, axis=0)
        one = body.literal(1, INT64)

        def counter(start: str, stop: str) -> str:
            return top.op("Cast", top.op("Range", top.op("Squeeze", start), top.op("Squeeze", stop), one),
                          to=onnx.TensorProto.UINT32)

        def field(_: Any) -> str:
            seed = top.op("Cast", body.attr_value("seed", "value_int"), to=onnx.TensorProto.UINT32)
            return random_bits(xp, seed, counter(first, end), counter(body.literal_1d([0]), elements))

        def expand(x1: str) -> str:
            return top.op("Expand", x1, step_shape)

        def rows(port: int) -> str | None:  # learnable weight/bias entries of the steps coded
            return top.op("Slice", body.input(port), first, end, body.literal_1d([0])) if view.has_input(port) else None

        coded = _a2s_core(view, xp, flat, rows(1), rows(2), field, expand)
        body.set_output(0, top.op("Reshape", coded, top.op("Concat", steps, shape, axis=0), allowzero=1))
        body.set_output(1, top.op("Squeeze", end))


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


def _a2s_span(view: NodeView, offset: Any, count: Any) -> tuple[int, int]:
    """``(first step, number of steps)`` a call codes, from its ``offset``/``count`` inputs."""
    total = view.attrs["steps"]
    first = 0 if offset is None else int(offset)
    steps = total - first if count is None else int(count)
    if first < 0 or steps < 0 or first + steps > total:
        raise NodeError(view.name, f"A2S steps {first} … {first + steps - 1} (offset {first}, count {steps}) "
                                   f"are outside its {total} steps")
    return first, steps


def _a2s_eager(view: NodeView, xp: Any, x: Any, weight: Any, bias: Any,
               field: Callable[[int, int, int, int], Any], first: int = 0, steps: int | None = None) -> Any:
    """A2S in an eager namespace (numpy or torch) for steps ``first … first + steps − 1``:
    flatten samples, code, restore shape."""
    total = view.attrs["steps"]
    steps = total - first if steps is None else steps
    for port, given in (("weight", weight), ("bias", bias)):
        if given is not None and tuple(given.shape) != (total,):
            raise NodeError(view.name, f"A2S {port} must have shape [{total}] (one per step), "
                                       f"got {list(given.shape)}")
    batch, sample_shape = x.shape[0], tuple(x.shape[1:])
    elements = math.prod(sample_shape)
    flat = x.reshape(batch, elements)
    coded = _a2s_core(view, xp, flat, None if weight is None else weight[first:first + steps],
                      None if bias is None else bias[first:first + steps],
                      lambda _: field(view.attrs["seed"], steps, elements, first),
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

    Streaming form (any of the state ports ``buffer0``/``filled0``/``windows0``, ``buffer``/
    ``filled``/``windows`` connected): a call continues a sequence, and T need not be a multiple
    of ``window``. Windowed decodings put the ``T`` steps of ``x`` after the ``filled0`` steps held
    in ``buffer0``, output every window this completes (``y`` is ``[windows completed · L, N, ...]``,
    possibly empty; learnable window j of the sequence uses weight row
    ``min(windows0 + j, rows − 1)``), and return the steps of the unfinished window in ``buffer``
    (zero-padded to ``[window, N, ...]``), their number in ``filled`` and ``windows0 + windows
    completed`` in ``windows``. ``global`` sums from 0 the running sum ``buffer0`` (``[1, N, ...]``)
    and then the steps, one addition each, in order (as a sum over all steps at once does);
    returns it in ``buffer`` and ``filled0 + T`` in ``filled``, and outputs the mean (integer:
    the count) over every step fed so far. A sequence fed call by call gives exactly the outputs
    of one call over the whole sequence. Before step 0: ``buffer0 = 0``, ``filled0 = windows0 =
    0``; a state input may be given as a scalar (it is broadcast).
    """

    name = "S2A"
    inputs = (
        Port("x", "spikes, [T, N, ...]", time=TIME_MAJOR),
        Port("weight", "learnable: kernels, [T / window, kernel] or [1, kernel]", optional=True, time=NO_TIME),
        Port("bias", "learnable: offsets, [T / window] or [1]", optional=True, time=NO_TIME),
        Port("buffer0", "streaming: steps of the unfinished window, broadcastable to [window, N, ...] "
             "(`global`: the running sum, [1, N, ...])", optional=True, time=NO_TIME),
        Port("filled0", "streaming: steps held in `buffer0` (`global`: steps fed so far), int64 scalar",
             type="tensor(int64)", optional=True, time=NO_TIME),
        Port("windows0", "streaming: windows completed before this call, int64 scalar", type="tensor(int64)",
             optional=True, time=NO_TIME),
    )
    outputs = (
        Port("y", "[T / window · L, N, ...], or [N, ...] for `global`", time=TIME_MAJOR),
        Port("buffer", "streaming: `buffer0` after this call, [window, N, ...] (`global`: [1, N, ...])",
             optional=True, time=NO_TIME),
        Port("filled", "streaming: `filled0` after this call, int64 scalar", type="tensor(int64)", optional=True,
             time=NO_TIME),
        Port("windows", "streaming: `windows0` after this call, int64 scalar", type="tensor(int64)",
             optional=True, time=NO_TIME),
    )
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
            return [None] + [None, [], []][: view.n_outputs - 1]
        window, *_, per_window = cls.geometry(view.attrs)
        if view.attrs["decoding"] == "global":
            y, window = list(x[1:]), 1
        elif _streaming(view):
            y = [UnknownDim(), *x[1:]]  # the windows a call completes depend on the state's values
        else:
            y = [x[0] // window * per_window, *x[1:]]
        return [y, [window, *x[1:]], [], []][: view.n_outputs]

    @classmethod
    def output_time(cls, view: NodeView) -> list[str]:
        return [NO_TIME if view.attrs["decoding"] == "global" else TIME_MAJOR] + [NO_TIME] * (view.n_outputs - 1)

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
    def state_spec(cls, view: NodeView) -> tuple[StateSpec, ...]:
        """``buffer`` (input 3, output 1; ``[window, N, ...]``, ``global``: ``[1, N, ...]``), ``filled``
        (4, 2) and, for learnable decoding, ``windows`` (5, 3): the streaming form's state (see the
        docstring), 0 before step 0."""
        integer = view.attrs["mode"] == "integer"
        glob = view.attrs["decoding"] == "global"
        rows = 1 if glob else cls.geometry(view.attrs)[0]
        specs = [StateSpec("buffer", 3, 1, np.dtype(np.int32 if integer else np.float32), 0, leading=(rows,),
                           doc="running sum" if glob else "steps of the unfinished window"),
                 StateSpec("filled", 4, 2, np.dtype(np.int64), 0, per_step=False,
                           doc="steps fed" if glob else "steps in the buffer")]
        if view.attrs["decoding"] == "learnable":
            specs.append(StateSpec("windows", 5, 3, np.dtype(np.int64), 0, per_step=False, doc="windows completed"))
        return tuple(specs)

    @classmethod
    def initial_state(cls, view: NodeView, shape: tuple[int, ...], dtype: Any = None) -> S2AState:
        """The state before step 0 for steps of shape ``shape`` (``[N, ...]``): an empty window
        (``global``: a zero running sum). ``dtype``: the spikes' type (default: the mode's)."""
        buffer = cls.state_spec(view)[0]
        return S2AState(np.full(buffer.shape(shape), buffer.fill, np.dtype(dtype or buffer.dtype)))

    @classmethod
    def step(cls, view: NodeView, state: S2AState, x: np.ndarray, weight: np.ndarray | None = None,
             bias: np.ndarray | None = None) -> tuple[list[np.ndarray], S2AState]:
        """Feed one step ``x [N, ...]`` (numpy). Returns the outputs this step completes — the
        ``L`` outputs of a window when ``x`` is its last step, else none — and the next state.

        This is the streaming form over one step, so stepping through T steps gives the
        reference's outputs exactly; ``global`` keeps a running sum whose mean :meth:`finish` returns.
        """
        xp = NumpyOps(view.attrs["mode"] == "integer", view.attrs)
        y, buffer, filled, windows = _s2a_stream_eager(view, xp, x[None].astype(xp.dtype, copy=False), weight, bias,
                                                       state.buffer, state.filled, state.windows)
        emitted = [] if view.attrs["decoding"] == "global" else list(y)
        return emitted, S2AState(buffer, filled, windows)

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
                  bias: np.ndarray | None = None, buffer0: np.ndarray | None = None,
                  filled0: np.ndarray | None = None, windows0: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        if view.attrs["mode"] == "integer" and x.dtype != np.int32:
            raise NodeError(view.name, f"S2A in integer mode needs int32 spikes, got {x.dtype}")
        if view.attrs["mode"] == "float":
            _check_array_type(view, x)
        xp = NumpyOps(view.attrs["mode"] == "integer", view.attrs)
        if not _streaming(view):
            return (_s2a_eager(view, xp, x, weight, bias),)
        y, buffer, filled, windows = _s2a_stream_eager(view, xp, x, weight, bias, buffer0, filled0, windows0)
        return (y, np.ascontiguousarray(buffer), np.array(filled, np.int64),
                np.array(windows, np.int64))[: view.n_outputs]

    @classmethod
    def torch_forward(cls, view: NodeView, x: Any, weight: Any = None, bias: Any = None, buffer0: Any = None,
                      filled0: Any = None, windows0: Any = None) -> tuple[Any, ...]:
        import torch

        from hnnx.ops.torch_ops import TorchOps

        _torch_float_only(view)
        xp = TorchOps(False, view.attrs, x.device)
        if not _streaming(view):
            return (_s2a_eager(view, xp, x, weight, bias),)
        y, buffer, filled, windows = _s2a_stream_eager(view, xp, x, weight, bias, buffer0, filled0, windows0)
        counters = [torch.tensor(value, dtype=torch.int64, device=x.device) for value in (filled, windows)]
        return (y, buffer, *counters)[: view.n_outputs]

    @classmethod
    def build_body(cls, view: NodeView, body: FunctionBody) -> None:
        top = body.top
        xp = OnnxOps(top, integer=view.attrs["mode"] == "integer")
        x = body.input(0)
        shape = top.op("Shape", x)
        rest = top.op("Slice", shape, body.literal_1d([1]), body.literal_1d([2**62]))
        if _streaming(view):
            _s2a_stream_body(view, body, xp, shape, rest)
            return
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


def _streaming(view: NodeView) -> bool:
    """Whether an S2A node is in its streaming form (a state port is connected)."""
    return any(view.has_input(index) for index in (3, 4, 5)) or view.n_outputs > 1


def _s2a_stream_eager(view: NodeView, xp: Any, x: Any, weight: Any, bias: Any, buffer0: Any, filled0: Any,
                      windows0: Any) -> tuple[Any, Any, int, int]:
    """The streaming form (see the S2A docstring) in an eager namespace: ``(y, buffer, filled, windows)``."""
    steps, rest = x.shape[0], tuple(x.shape[1:])
    filled = 0 if filled0 is None else int(filled0)
    done = 0 if windows0 is None else int(windows0)
    buffer = S2A.state_spec(view)[0]
    held = xp.broadcast(buffer.fill if buffer0 is None else buffer0, buffer.shape(rest))
    if view.attrs["decoding"] == "global":
        total = xp.add(xp.literal(0), held[0])
        for t in range(steps):  # from 0, one addition per step in order, as onnxruntime's ReduceSum over axis 0
            total = xp.add(total, x[t])
        count = filled + steps
        if count == 0:
            raise NodeError(view.name, "S2A global rate of an empty sequence (T = 0)")
        rate = total if xp.integer else xp.div(total, xp.literal(float(count)))
        y = xp.relu(rate) if view.attrs["activation"] == "relu" else rate
        return y, xp.unsqueeze(total, 0), count, done
    window, kernel, _, _, per_window = S2A.geometry(view.attrs)
    if not 0 <= filled < window:
        raise NodeError(view.name, f"S2A filled0 = {filled} must lie in [0, {window})")
    for name, given, rank in (("weight", weight, 2), ("bias", bias, 1)):
        if given is not None and (given.ndim != rank or given.shape[0] < 1 or rank == 2 and given.shape[1] != kernel):
            raise NodeError(view.name, f"S2A {name} must have shape {'[rows, kernel]' if rank == 2 else '[rows]'} "
                                       f"with kernel {kernel}, got {list(given.shape)}")
    pending = [held[i] for i in range(filled)] + [x[t] for t in range(steps)]
    complete = len(pending) // window
    if complete:
        windows = xp.stack(pending[: complete * window]).reshape(complete, window, math.prod(rest))

        def rows(table: Any) -> Any:
            return None if table is None else table[[min(done + j, table.shape[0] - 1) for j in range(complete)]]

        y = _s2a_core(view, xp, windows, rows(weight), rows(bias)).reshape(complete * per_window, *rest)
    else:
        y = xp.zeros((0, *rest))
    left = pending[complete * window:]
    return y, xp.stack(left + [xp.zeros(rest)] * (window - len(left))), len(left), done + complete


def _s2a_stream_body(view: NodeView, body: FunctionBody, xp: OnnxOps, shape: str, rest: str) -> None:
    """The streaming form's ONNX body (the equations of :func:`_s2a_stream_eager`)."""
    top = body.top
    x = body.input(0)
    buffer = S2A.state_spec(view)[0]
    steps = top.op("Slice", shape, body.literal_1d([0]), body.literal_1d([1]))  # [1] int64

    def counter(port: int) -> str:  # an int64 state input as [1]
        return top.op("Reshape", body.input(port), body.literal_1d([1])) if view.has_input(port) else body.literal_1d([0])

    fill = body.literal(buffer.fill, xp.elem)
    held = top.op("Expand", body.input(3) if view.has_input(3) else fill,
                  top.op("Concat", body.literal_1d([buffer.leading[0]]), rest, axis=0))
    filled, done = counter(4), counter(5)
    if view.attrs["decoding"] == "global":
        # Concat then ReduceSum over axis 0: from 0, the held sum, then one addition per step in order.
        total = top.op("ReduceSum", top.op("Concat", held, x, axis=0), body.literal_1d([0]), keepdims=1)
        count = top.op("Add", filled, steps)
        rate = top.op("Squeeze", total, body.literal_1d([0]))
        if not xp.integer:
            rate = xp.div(rate, top.op("Squeeze", top.op("Cast", count, to=FLOAT)))
        body.set_output(0, xp.relu(rate) if view.attrs["activation"] == "relu" else rate)
        for index, value in ((1, total), (2, count), (3, done)):
            body.set_output(index, value if index == 1 else top.op("Squeeze", value))
        return
    window = buffer.leading[0]
    per_window = S2A.geometry(view.attrs)[4]
    pending = top.op("Concat", top.op("Slice", held, body.literal_1d([0]), filled, body.literal_1d([0])), x, axis=0)
    length = top.op("Add", filled, steps)
    width = body.literal_1d([window])
    complete = top.op("Div", length, width)  # non-negative: truncation is the floor
    used = top.op("Mul", complete, width)
    elements = top.op("ReduceProd", rest, keepdims=1)
    windows = top.op("Reshape", top.op("Slice", pending, body.literal_1d([0]), used, body.literal_1d([0])),
                     top.op("Concat", complete, width, elements, axis=0))  # [complete, window, M]

    def rows(port: int) -> str | None:  # learnable row of each completed window, the last row repeating
        if not view.has_input(port):
            return None
        table = body.input(port)
        last = top.op("Sub", top.op("Slice", top.op("Shape", table), body.literal_1d([0]), body.literal_1d([1])),
                      body.literal_1d([1]))
        index = top.op("Range", top.op("Squeeze", done), top.op("Squeeze", top.op("Add", done, complete)),
                       body.literal(1, INT64))
        return top.op("Gather", table, top.op("Min", index, last), axis=0)

    pooled = _s2a_core(view, xp, windows, rows(1), rows(2))  # [complete, L, M]
    body.set_output(0, top.op("Reshape", pooled, top.op("Concat", top.op("Mul", complete, body.literal_1d([per_window])),
                                                         rest, axis=0)))
    left = top.op("Slice", pending, used, length, body.literal_1d([0]))
    padding = top.op("Expand", body.literal(0, xp.elem),
                     top.op("Concat", top.op("Sub", width, top.op("Sub", length, used)), rest, axis=0))
    body.set_output(1, top.op("Concat", left, padding, axis=0))
    body.set_output(2, top.op("Squeeze", top.op("Sub", length, used)))
    body.set_output(3, top.op("Squeeze", top.op("Add", done, complete)))


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
