"""NIR import and export: every node type both ways against an independent NIR simulator, the NIR
paper's fixtures (the Norse LIF trace, the Sinabs CNN, the snnTorch Braille RNNs), errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import hnnx
from hnnx import ops
from hnnx.cli import main
from hnnx.errors import HnnxError, ModelError, NodeError
from hnnx.frontends.nir import import_nir
from hnnx.interop.nir import export_nir, to_nir
from hnnx.interop.nir_file import NirGraph, NirNode, read_nir, write_nir

pytest.importorskip("h5py", reason="NIR files need h5py (pip install 'hnnx[nir]')")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nir"
DT = 1e-3


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"NIR fixture {name} not found under {FIXTURES}")
    return path


# ---------------------------------------------------------------------------------------------
# An independent simulator of NIR graphs (forward Euler in NIR's textbook form, float64, torch
# for convolutions), written from the NIR equations, not from hnnx
# ---------------------------------------------------------------------------------------------
def inline(graph: NirGraph, prefix: str = "") -> tuple[dict[str, NirNode], list[tuple[str, str]]]:
    """Nested graphs replaced by their nodes; their Input/Output nodes dropped from the edges."""
    nodes, edges, alias_in, alias_out = {}, [], {}, {}
    for name, node in graph.nodes.items():
        if isinstance(node, NirGraph):
            inner_nodes, inner_edges = inline(node, f"{prefix}{name}.")
            entry = next(n for n, c in node.nodes.items() if c.type == "Input")
            exit_ = next(n for n, c in node.nodes.items() if c.type == "Output")
            alias_in[name] = [b for a, b in inner_edges if a == f"{prefix}{name}.{entry}"]
            alias_out[name] = [a for a, b in inner_edges if b == f"{prefix}{name}.{exit_}"]
            dropped = {f"{prefix}{name}.{entry}", f"{prefix}{name}.{exit_}"}
            nodes.update({k: v for k, v in inner_nodes.items() if k not in dropped})
            edges += [(a, b) for a, b in inner_edges if a not in dropped and b not in dropped]
        else:
            nodes[prefix + name] = node
    for a, b in graph.edges:
        for source in alias_out.get(a, [prefix + a]):
            for target in alias_in.get(b, [prefix + b]):
                edges.append((source, target))
    return nodes, edges


def simulate_nir(graph: NirGraph, feeds: dict[str, np.ndarray], dt: float) -> dict[str, np.ndarray]:
    """Outputs ``[T, N, ...]`` of a NIR graph for inputs ``[T, N, ...]``: every node evaluated each step
    in dependency order; an edge that closes a cycle delivers the value of the step before."""
    nodes, edges = inline(graph)
    finished: list[str] = []
    back: set[tuple[str, str]] = set()

    def visit(name: str, path: list[str]) -> None:  # depth-first from the inputs: edges into the path close a loop
        for a, b in edges:
            if a == name:
                if b in path or b == name:
                    back.add((a, b))
                elif b not in finished:
                    visit(b, path + [name])
        if name not in finished:
            finished.append(name)

    for name, node in nodes.items():
        if node.type == "Input":
            visit(name, [])
    order = finished[::-1]
    steps, samples = next(iter(feeds.values())).shape[:2]
    value: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, torch.Tensor]] = {}
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n, node in nodes.items() if node.type == "Output"}

    def p(node: NirNode, key: str, default: Any = None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(node.params.get(key, default), np.float64))

    def looped(source: str) -> torch.Tensor | None:
        """A loop's value from the step before; before step 0 the loop's Affine gives W·0 + b."""
        if source in last:
            return last[source]
        return p(nodes[source], "bias") if nodes[source].type == "Affine" else None

    for t in range(steps):
        for name in order:
            node = nodes[name]
            ins = [(looped(a) if (a, name) in back else value[a]) for a, b in edges if b == name]
            ins = [x for x in ins if x is not None]
            x = sum(ins[1:], ins[0]) if ins else None
            kind = node.type
            if kind == "Input":
                y = torch.as_tensor(feeds[name][t], dtype=torch.float64)
            elif kind == "Output":
                y = x
                outputs[name].append(y)
            elif kind in ("Affine", "Linear"):
                y = x @ p(node, "weight").T + (p(node, "bias") if kind == "Affine" else 0)
            elif kind == "Scale":
                y = x * p(node, "scale")
            elif kind in ("Conv1d", "Conv2d"):
                conv = F.conv1d if kind == "Conv1d" else F.conv2d
                padding = node.params["padding"]
                padding = padding if isinstance(padding, str) else tuple(np.atleast_1d(padding).tolist())
                y = conv(x, p(node, "weight"), p(node, "bias"), tuple(np.atleast_1d(node.params["stride"]).tolist()),
                         padding, tuple(np.atleast_1d(node.params["dilation"]).tolist()), int(node.params["groups"]))
            elif kind in ("SumPool2d", "AvgPool2d"):
                k = tuple(np.atleast_1d(node.params["kernel_size"]).tolist())
                y = F.avg_pool2d(x, k, tuple(np.atleast_1d(node.params["stride"]).tolist()),
                                 tuple(np.atleast_1d(node.params["padding"]).tolist()), count_include_pad=True)
                y = y * (k[0] * k[1]) if kind == "SumPool2d" else y
            elif kind == "Flatten":
                y = torch.flatten(x, int(node.params["start_dim"]) + 1, int(node.params["end_dim"]) + (
                    1 if int(node.params["end_dim"]) >= 0 else 0))
            elif kind == "Threshold":
                y = (x > p(node, "threshold")).double()
            else:
                s = state.setdefault(name, {"v": torch.zeros_like(x), "i": torch.zeros_like(x)})
                r = p(node, "r", 1.0)
                if kind in ("IF", "I"):
                    s["v"] = s["v"] + dt * r * x
                elif kind in ("LIF", "LI"):
                    s["v"] = s["v"] + dt / p(node, "tau") * (p(node, "v_leak") - s["v"] + r * x)
                else:  # CubaLIF: the current first, the membrane with the new current
                    s["i"] = s["i"] + dt / p(node, "tau_syn") * (-s["i"] + p(node, "w_in", 1.0) * x)
                    s["v"] = s["v"] + dt / p(node, "tau_mem") * (p(node, "v_leak") - s["v"] + r * s["i"])
                if kind in ("LI", "I"):
                    y = s["v"]
                else:
                    fired = s["v"] > p(node, "v_threshold")
                    s["v"] = torch.where(fired, p(node, "v_reset", 0.0).expand_as(s["v"]), s["v"])
                    y = fired.double()
            value[name] = y
        last = dict(value)
    return {name: torch.stack(ys).numpy() for name, ys in outputs.items()}


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})))


# ---------------------------------------------------------------------------------------------
# Graphs using every NIR node type. Parameters and weights are dyadic and the time constants give
# dt/τ = 1/4 or 1/2, so float32 (hnnx) and float64 (the simulator above) compute the same numbers
# exactly; thresholds sit off the dyadic grid, so no membrane ever equals one.
# ---------------------------------------------------------------------------------------------
def dyadic(rng: np.random.Generator, shape: tuple[int, ...], low: int = -8, high: int = 12) -> np.ndarray:
    return (rng.integers(low, high, shape) / 8).astype(np.float32)


def lif(n: int, tau: float = 4 * DT, leak: float = 0.0, threshold: float = 1.03, r: float = 1.0) -> NirNode:
    return NirNode("LIF", {"tau": np.full(n, tau), "r": np.full(n, r), "v_leak": np.full(n, leak),
                           "v_threshold": np.full(n, threshold), "v_reset": np.zeros(n)})


def cuba(n: int, leak: float = 0.0) -> NirNode:
    return NirNode("CubaLIF", {"tau_syn": np.full(n, 2 * DT), "tau_mem": np.full(n, 4 * DT), "r": np.full(n, 4.0),
                               "w_in": np.full(n, 2.0), "v_leak": np.full(n, leak), "v_threshold": np.full(n, 0.97),
                               "v_reset": np.full(n, 0.125)})


def io(shape: tuple[int, ...], kind: str = "Input") -> NirNode:
    return NirNode(kind, {"shape": np.array(shape, np.int64)})


def chain(*named: tuple[str, NirNode]) -> NirGraph:
    nodes = dict(named)
    names = list(nodes)
    return NirGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])))


def graph_cases() -> dict[str, NirGraph]:
    rng = np.random.default_rng(7)
    w = lambda *shape: dyadic(rng, shape)  # noqa: E731
    cases = {
        "dense": chain(("input", io((6,))), ("fc1", NirNode("Affine", {"weight": w(8, 6), "bias": w(8)})),
                       ("lif1", lif(8, leak=0.25)), ("fc2", NirNode("Linear", {"weight": w(5, 8)})),
                       ("if1", NirNode("IF", {"r": np.full(5, 500.0), "v_threshold": np.full(5, 0.9),
                                              "v_reset": np.full(5, -0.25)})),
                       ("output", io((5,), "Output"))),
        "cuba": chain(("input", io((6,))), ("fc1", NirNode("Linear", {"weight": w(7, 6)})), ("lif1", cuba(7, 0.5)),
                      ("fc2", NirNode("Affine", {"weight": w(4, 7), "bias": w(4)})), ("lif2", cuba(4)),
                      ("output", io((4,), "Output"))),
        "conv2d": chain(("input", io((2, 6, 6))),
                        ("c1", NirNode("Conv2d", {"weight": w(3, 2, 3, 3), "bias": w(3), "stride": np.array([1, 1]),
                                                  "padding": np.array([1, 1]), "dilation": np.array([1, 1]),
                                                  "groups": np.int64(1), "input_shape": np.array([6, 6])})),
                        ("if1", NirNode("IF", {"r": np.full((3, 6, 6), 1 / DT), "v_threshold": np.full((3, 6, 6), 1.53)})),
                        ("pool", NirNode("SumPool2d", {"kernel_size": np.array([2, 2]), "stride": np.array([2, 2]),
                                                       "padding": np.array([0, 0])})),
                        ("c2", NirNode("Conv2d", {"weight": w(4, 3, 2, 2), "bias": w(4), "stride": np.array([1, 1]),
                                                  "padding": np.array([0, 0]), "dilation": np.array([1, 1]),
                                                  "groups": np.int64(1)})),
                        ("lif2", NirNode("LIF", {"tau": np.full((4, 2, 2), 2 * DT), "r": np.full((4, 2, 2), 2.0),
                                                 "v_leak": np.zeros((4, 2, 2)), "v_threshold": np.full((4, 2, 2), 2.13),
                                                 "v_reset": np.zeros((4, 2, 2))})),
                        ("avg", NirNode("AvgPool2d", {"kernel_size": np.array([2, 2]), "stride": np.array([2, 2]),
                                                      "padding": np.array([0, 0])})),
                        ("flat", NirNode("Flatten", {"start_dim": np.int64(0), "end_dim": np.int64(-1),
                                                     "input_type": np.array([4, 1, 1])})),
                        ("fc", NirNode("Affine", {"weight": w(3, 4), "bias": w(3)})),
                        ("threshold", NirNode("Threshold", {"threshold": np.array([4.2, 1.55, 0.66])})),
                        ("output", io((3,), "Output"))),
        "conv1d": chain(("input", io((2, 8))),
                        ("c1", NirNode("Conv1d", {"weight": w(3, 2, 3), "bias": w(3), "stride": np.int64(1),
                                                  "padding": "same", "dilation": np.int64(1), "groups": np.int64(1),
                                                  "input_shape": np.int64(8)})),
                        ("lif1", lif(3 * 8, threshold=0.8).__class__("LIF", {
                            k: v.reshape(3, 8) for k, v in lif(3 * 8, threshold=0.8).params.items()})),
                        ("flat", NirNode("Flatten", {"start_dim": np.int64(0), "end_dim": np.int64(1)})),
                        ("fc", NirNode("Linear", {"weight": w(4, 24)})),
                        ("scale", NirNode("Scale", {"scale": np.array([0.5, 1.0, 2.0, -1.0])})),
                        ("li", NirNode("LI", {"tau": np.full(4, 2 * DT), "r": np.full(4, 2.0), "v_leak": np.full(4, 0.25)})),
                        ("output", io((4,), "Output"))),
    }
    readout = chain(("input", io((6,))), ("fc", NirNode("Affine", {"weight": w(5, 6), "bias": w(5)})),
                    ("integrator", NirNode("I", {"r": np.full(5, 250.0)})), ("output", io((5,), "Output")))
    readout.nodes["lif"] = lif(5)
    readout.nodes["spikes"] = io((5,), "Output")
    readout.edges += [("fc", "lif"), ("lif", "spikes"), ("input", "fc2"), ("fc2", "lif")]
    readout.nodes["fc2"] = NirNode("Linear", {"weight": w(5, 6)})  # two edges into "lif": NIR sums them
    cases["fan_in_two_outputs"] = readout

    recurrent = chain(("input", io((6,))), ("fc1", NirNode("Affine", {"weight": w(8, 6), "bias": w(8)})),
                      ("lif1", lif(8)), ("fc2", NirNode("Linear", {"weight": w(5, 8)})), ("lif2", cuba(5)),
                      ("output", io((5,), "Output")))
    recurrent.nodes["lif1.w_rec"] = NirNode("Linear", {"weight": w(8, 8)})
    recurrent.nodes["lif2.w_rec"] = NirNode("Affine", {"weight": w(5, 5), "bias": w(5)})
    recurrent.edges += [("lif1", "lif1.w_rec"), ("lif1.w_rec", "lif1"), ("lif2", "lif2.w_rec"), ("lif2.w_rec", "lif2")]
    cases["recurrent"] = recurrent

    inner = NirGraph(nodes={"input": io((5,)), "lif": cuba(5), "rec": NirNode("Linear", {"weight": w(5, 5)}),
                            "output": io((5,), "Output")},
                     edges=[("input", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")])
    cases["nested"] = NirGraph(nodes={"input": io((6,)), "fc": NirNode("Linear", {"weight": w(5, 6)}), "rnn": inner,
                                      "output": io((5,), "Output")},
                               edges=[("input", "fc"), ("fc", "rnn"), ("rnn", "output")])

    hetero = lif(6)
    hetero.params["tau"] = np.array([4, 4, 2, 4, 2, 8]) * DT
    hetero.params["v_threshold"] = np.array([1.03, 0.6, 1.03, 0.6, 1.03, 1.03])
    cases["per_neuron_parameters"] = chain(("input", io((6,))), ("fc", NirNode("Linear", {"weight": w(6, 6)})),
                                           ("lif", hetero), ("output", io((6,), "Output")))
    return cases


CASES = graph_cases()


def spike_feeds(graph: NirGraph, steps: int = 10, samples: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.random((steps, samples, *np.atleast_1d(node.params["shape"]))) < 0.5).astype(np.float32)
            for name, node in graph.nodes.items() if node.type == "Input"}


def nir_types(graph: NirGraph) -> set[str]:
    nodes, _ = inline(graph)
    return {node.type for node in nodes.values()}


@pytest.mark.parametrize("case", list(CASES))
def test_every_node_type_imports_as_the_nir_equations_and_exports_back(case: str, tmp_path: Path) -> None:
    graph = CASES[case]
    path = tmp_path / f"{case}.nir"
    write_nir(graph, path)
    model, report = import_nir(path, DT)
    onnx.checker.check_model(model, full_check=True)
    feeds = spike_feeds(graph)
    expected = simulate_nir(graph, feeds, DT)
    got = run_model(model, feeds)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value.astype(np.float32), err_msg=f"{case}: output {name!r}")
    activity = np.concatenate([v.reshape(-1) for v in expected.values()])
    assert 0 < np.count_nonzero(activity) < activity.size, f"{case}: the outputs are trivial"
    assert {entry.type for entry in report.nodes} == nir_types(graph)

    exported_path = tmp_path / f"{case}_exported.nir"
    export_nir(model, exported_path, DT)
    exported, version = read_nir(exported_path)
    assert nir_types(exported) >= nir_types(graph) - {"NIRGraph"}
    # a recurrent bias becomes an identity Affine; a recurrent neuron's input gain a Scale (its r would
    # also scale the recurrent weight)
    assert nir_types(exported) - nir_types(graph) <= {"Affine", "Scale"}
    for name, value in simulate_nir(exported, feeds, DT).items():  # NIR's own semantics of what hnnx wrote
        np.testing.assert_array_equal(value.astype(np.float32), got[name], err_msg=f"{case}: exported {name!r}")
    again, _ = import_nir(exported_path, DT)
    for name, value in run_model(again, feeds).items():
        np.testing.assert_array_equal(value, got[name], err_msg=f"{case}: re-imported {name!r}")


def test_exported_files_read_with_the_nir_package(tmp_path: Path) -> None:
    nir = pytest.importorskip("nir", reason="the nir package is an optional test extra")
    for case, graph in CASES.items():
        model, _ = import_nir(write_or(graph, tmp_path / f"{case}.nir"), DT)
        export_nir(model, tmp_path / f"{case}_out.nir", DT)
        read = nir.read(str(tmp_path / f"{case}_out.nir"))  # with nir's own type check
        assert {type(node).__name__ for node in read.nodes.values()} == nir_types(read_nir(tmp_path / f"{case}_out.nir")[0])


def write_or(graph: NirGraph, path: Path) -> Path:
    write_nir(graph, path)
    return path


def test_per_neuron_parameters_become_groups_and_recurrent_ones_are_refused(tmp_path: Path) -> None:
    model, report = import_nir(write_or(CASES["per_neuron_parameters"], tmp_path / "h.nir"), DT)
    lifs = [node for node in model.graph.node if node.op_type == "LIF"]
    assert len(lifs) == 4  # (τ, θ) ∈ {(4, 1.03), (4, 0.6), (2, 1.03), (8, 1.03)}
    assert any("4 groups" in note for entry in report.nodes for note in entry.notes)
    graph = CASES["recurrent"]
    graph.nodes["lif1"].params["tau"] = np.linspace(2, 8, 8) * DT
    try:
        with pytest.raises(ModelError, match="node 'lif1'.*recurrent neuron whose parameters differ"):
            import_nir(write_or(graph, tmp_path / "r.nir"), DT)
    finally:
        graph.nodes["lif1"].params["tau"] = np.full(8, 4 * DT)


# ---------------------------------------------------------------------------------------------
# Discretisation and the report
# ---------------------------------------------------------------------------------------------
def test_discretised_parameters_euler_and_exp(tmp_path: Path) -> None:
    graph = chain(("input", io((2,))), ("lif", lif(2, tau=4 * DT, leak=0.5, r=3.0)), ("output", io((2,), "Output")))
    path = write_or(graph, tmp_path / "g.nir")
    for scheme, alpha, gain in (("euler", 0.75, 0.25), ("exp", np.exp(-0.25), 1 - np.exp(-0.25))):
        model, report = import_nir(path, DT, scheme)
        node = next(n for n in model.graph.node if n.op_type == "LIF")
        attrs = ops.LIF.view(node).attrs
        assert attrs["alpha"] == np.float32(alpha) and attrs["beta"] == np.float32(0.5 * gain)
        assert attrs["v_init"] == attrs["beta"] and attrs["threshold"] == np.float32(1.03)
        mul = next(n for n in model.graph.node if n.op_type == "Mul")
        factor = next(i for i in model.graph.initializer if i.name == mul.input[1])
        assert onnx.numpy_helper.to_array(factor) == np.float32(3.0 * gain)
        assert report.scheme == scheme and scheme in json.loads(report.to_json())["scheme"]


def test_dt_larger_than_tau_is_refused_for_euler_and_allowed_for_exp(tmp_path: Path) -> None:
    path = write_or(chain(("input", io((2,))), ("lif", lif(2, tau=DT / 2)), ("output", io((2,), "Output"))),
                    tmp_path / "g.nir")
    with pytest.raises(ModelError, match=r"node 'lif': dt = 0.001 exceeds tau = 0.0005.*--scheme exp"):
        import_nir(path, DT)
    import_nir(path, DT, "exp")
    with pytest.raises(HnnxError, match="dt must be a positive"):
        import_nir(path, 0.0)


def test_report_lists_conventions_and_approximations(tmp_path: Path) -> None:
    model, report = import_nir(write_or(CASES["recurrent"], tmp_path / "r.nir"), DT)
    text = report.to_markdown()
    assert "v > v_threshold (strict)" in text and "reset" in text.lower() and "forward Euler" in text
    by_name = {entry.name: entry for entry in report.nodes}
    assert by_name["fc1"].exact and not by_name["lif1"].exact
    assert "recurrent_weight" in by_name["lif2.w_rec"].hnnx[0]
    assert any("bias added" in note for note in by_name["lif2.w_rec"].notes)
    assert {p.key for p in model.metadata_props} >= {"hnnx.nir.dt", "hnnx.nir.scheme"}


# ---------------------------------------------------------------------------------------------
# Export: what NIR cannot express stops with the node's name
# ---------------------------------------------------------------------------------------------
def lif_model(attrs: dict[str, Any], extra_inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ("s",)
              ) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    node = ops.make_node("LIF", ["x", *extra_inputs], list(outputs), name="neuron", **attrs)
    elem = TensorProto.INT32 if attrs.get("mode") == "integer" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", elem, ["T", "N", 4])]
    inputs += [helper.make_tensor_value_info(n, elem, [4]) for n in extra_inputs if n]
    outs = [helper.make_tensor_value_info(outputs[0], elem, ["T", "N", 4])]
    outs += [helper.make_tensor_value_info(o, elem, ["N", 4]) for o in outputs[1:2]]
    graph = helper.make_graph([node], "g", inputs, outs)
    return ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


@pytest.mark.parametrize("attrs, extra, outputs, message", [
    ({"reset_mode": "soft"}, (), ("s",), "reset_mode 'soft'"),
    ({"reset_mode": "none"}, (), ("s",), "reset_mode 'none'"),
    ({"refractory": 2}, (), ("s",), "refractory period"),
    ({"theta_increment": 0.5}, (), ("s",), "adaptive threshold"),
    ({"v_lower": -1.0}, (), ("s",), "v_lower"),
    ({"mode": "integer", "threshold": 10}, (), ("s",), "integer-mode LIF"),
    ({"alpha": 0.5, "v_init": 0.25}, (), ("s",), "v_init = 0.25"),
    ({}, ("v0",), ("s",), "initial-state input"),
    ({}, (), ("s", "v"), "state output 1"),
])
def test_export_refuses_what_nir_cannot_express(attrs: dict[str, Any], extra: tuple[str, ...],
                                                outputs: tuple[str, ...], message: str) -> None:
    model = lif_model(attrs, extra, outputs)
    with pytest.raises(NodeError, match=f"node 'neuron'.*{message}"):
        to_nir(model)


def test_export_refuses_hybrid_units_and_foreign_ops() -> None:
    with pytest.raises(NodeError, match="hybrid unit"):
        to_nir(hnnx.load(hnnx.models.path("snn_mlp")))
    model = lif_model({})
    model.graph.node.insert(0, onnx.helper.make_node("Relu", ["x"], ["x_relu"], name="relu"))
    model.graph.node[1].input[0] = "x_relu"
    with pytest.raises(NodeError, match="node 'relu': Relu has no NIR equivalent"):
        to_nir(model)


def test_torch_front_end_model_exports_to_nir_and_back(tmp_path: Path) -> None:
    """A conv SNN trained-style in hnnx.frontends.torch (time folded around Conv/Linear) → NIR → hnnx."""
    from torch import nn

    import hnnx.frontends.torch as hnn

    torch.manual_seed(0)
    net = nn.Sequential(hnn.TimeFold(nn.Conv2d(2, 4, 3, padding=1)), hnn.LIF(alpha=0.875, threshold=0.25),
                        hnn.TimeFold(nn.Flatten()), hnn.TimeFold(nn.Linear(4 * 6 * 6, 5)),
                        hnn.LIF(alpha=0.75, threshold=0.1))
    x = (torch.rand(6, 3, 2, 6, 6) < 0.5).float()
    hnn.export(net, (x,), tmp_path / "net.onnx", input_names=["x"], output_names=["y"], time_major_inputs=[0])
    exported = export_nir(tmp_path / "net.onnx", tmp_path / "net.nir", DT)
    assert [t for _, t in exported.mapping] == [f"{n} ({t})" for n, t in
                                               zip([m.split(" ")[0] for _, m in exported.mapping],
                                                   ["Conv2d", "LIF", "Flatten", "Affine", "LIF"])]
    model, _ = import_nir(tmp_path / "net.nir", DT)
    direct = ort.InferenceSession(str(tmp_path / "net.onnx")).run(None, {"x": x.numpy()})[0]
    again = run_model(model, {"x": x.numpy()})
    np.testing.assert_array_equal(next(iter(again.values())), direct)
    assert 0 < direct.mean() < 1


# ---------------------------------------------------------------------------------------------
# The NIR paper's fixtures
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["euler", "exp"])
def test_norse_lif_fixture_reproduces_the_exact_ode_spike_steps(scheme: str) -> None:
    trace = np.loadtxt(fixture("lif_exact.csv"), delimiter=",")
    assert list(np.flatnonzero(trace[:, 2])) == [460, 510, 710, 760]
    model, report = import_nir(fixture("lif_norse.nir"), 1e-4, scheme)
    spikes = next(iter(run_model(model, {"input": trace[:, 0].reshape(-1, 1, 1)}).values()))
    assert list(np.flatnonzero(spikes[:, 0, 0])) == [460, 510, 710, 760]


def test_sinabs_cnn_fixture_imports_and_runs_as_the_nir_equations() -> None:
    path = fixture("cnn_sinabs.nir")
    model, report = import_nir(path, 1.0)  # Sinabs writes τ in steps and r = 1: dt = 1 step
    assert [n.op_type for n in model.graph.node].count("LIF") == 5
    graph, _ = read_nir(path)
    feeds = {"input": (np.random.default_rng(1).random((8, 2, 2, 34, 34)) < 0.2).astype(np.float32)}
    expected = simulate_nir(graph, feeds, 1.0)["output"]
    got = run_model(model, feeds)["output"]
    # float32 convolutions sum in another order than the float64 simulator: allow rare ties to flip
    assert (got == expected).mean() >= 0.99 and expected.sum() > 0


@pytest.mark.parametrize("variant", ["bias_zero", "noBias_subtract"])
def test_braille_recurrent_fixtures_flat_and_nested_agree_with_the_nir_equations(variant: str) -> None:
    flat, nested = fixture(f"braille_noDelay_{variant}.nir"), fixture(f"braille_noDelay_{variant}_subgraph.nir")
    model, report = import_nir(flat, 1e-4)
    nested_model, _ = import_nir(nested, 1e-4)
    assert sum(n.op_type == "CubaLIF" for n in model.graph.node) == 2
    assert any(len(n.input) == 5 and n.input[4] for n in model.graph.node if n.op_type == "CubaLIF")
    rng = np.random.default_rng(3)
    feeds = {"input": (rng.random((60, 4, 12)) < 0.3).astype(np.float32)}
    got = run_model(model, feeds)["output"]
    np.testing.assert_array_equal(run_model(nested_model, feeds)["output"], got)
    expected = simulate_nir(read_nir(flat)[0], feeds, 1e-4)["output"]
    assert (got == expected).mean() >= 0.99 and 0 < got.mean() < 1
    unrolled = read_nir(flat)[0]
    for node in unrolled.nodes.values():
        if node.type in ("Linear", "Affine") and node.params["weight"].shape[0] == node.params["weight"].shape[1]:
            node.params["weight"] = np.zeros_like(node.params["weight"])  # cut the recurrent loop
    assert not np.array_equal(simulate_nir(unrolled, feeds, 1e-4)["output"], expected)  # the loop matters


def test_other_fixtures_import_with_notes() -> None:
    model, report = import_nir(fixture("lif_rockpool.nir"), 1e-4)
    output = next(entry for entry in report.nodes if entry.type == "Output")
    assert any("declares shape [1, 1, 1]" in note for note in output.notes)
    model, _ = import_nir(fixture("two_lif_neurons.nir"), 1e-4)
    onnx.checker.check_model(model, full_check=True)


def test_malformed_fixtures_are_refused_naming_the_node() -> None:
    with pytest.raises(ModelError, match=r"node 'linear': Linear weight of shape \[128, 64\].*input has shape "
                                         r"\[128\] \(a weight stored \(in, out\)\?\)"):
        import_nir(fixture("negative/spyx_shd.nir"), 1e-4)
    with pytest.raises(ModelError, match=r"edge .* names node 'lif', which does not exist"):
        import_nir(fixture("negative/braille_noDelay_bias_zero_subgraph_dangling_edge.nir"), 1e-4)


def test_unsupported_node_and_cycle_are_one_line_errors(tmp_path: Path) -> None:
    delay = chain(("input", io((2,))), ("wait", NirNode("Delay", {"delay": np.full(2, 0.01)})),
                  ("output", io((2,), "Output")))
    with pytest.raises(ModelError, match="node 'wait': NIR node type 'Delay' is not supported"):
        import_nir(write_or(delay, tmp_path / "d.nir"), DT)
    cycle = chain(("input", io((2,))), ("a", NirNode("Linear", {"weight": np.eye(2)})),
                  ("b", NirNode("Linear", {"weight": np.eye(2)})), ("output", io((2,), "Output")))
    cycle.edges.append(("b", "a"))
    with pytest.raises(ModelError, match="nodes 'a', 'b' form a cycle hnnx cannot express"):
        import_nir(write_or(cycle, tmp_path / "c.nir"), DT)


def test_not_a_nir_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nir"
    bad.write_text("not hdf5")
    with pytest.raises(ModelError, match="bad.nir: not an HDF5 file"):
        import_nir(bad, DT)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def test_cli_import_and_export(tmp_path: Path) -> None:
    source = write_or(CASES["recurrent"], tmp_path / "r.nir")
    runner = CliRunner()
    result = runner.invoke(main, ["nir", "import", str(source), "-o", str(tmp_path / "r.onnx"), "--dt", str(DT),
                                  "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert "| lif1 | LIF |" in result.output and (tmp_path / "report.md").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["dt"] == DT
    result = runner.invoke(main, ["nir", "export", str(tmp_path / "r.onnx"), "-o", str(tmp_path / "back.nir"),
                                  "--dt", str(DT)])
    assert result.exit_code == 0, result.output
    assert nir_types(read_nir(tmp_path / "back.nir")[0]) >= {"LIF", "CubaLIF", "Linear", "Affine"}


@pytest.mark.parametrize("args, message", [
    (["nir", "import", "missing.nir", "-o", "x.onnx", "--dt", "1e-3"], "missing.nir: no such file"),
    (["nir", "import", "{src}", "-o", "x.onnx", "--dt", "-1"], "dt must be a positive"),
    (["nir", "import", "{src}", "-o", "x.txt", "--dt", "1e-3"], "must end in .onnx"),
    (["nir", "export", "{model}", "-o", "y.nir"], "hybrid unit"),
])
def test_cli_errors_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = write_or(CASES["dense"], tmp_path / "src.nir")
    args = [a.format(src=source, model=hnnx.models.path("hybrid_s2a")) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hnnx: error:") and message in lines[0]
