"""``hnnx finetune``: train an hnnx graph (typically its ``tianjicx`` fake-quant form) in torch and
write the best weights back into the same graph.

The recipe of HNN's shift-only INT8 flow (quantize → evaluate → fine-tune → quantize again),
on the graph: the fake-quant model of ``hnnx quantize --format fakequant`` trains through
straight-through estimators (:mod:`hnnx.qat.kernels`) with its scales fixed, and the written
model re-quantizes with ``hnnx quantize --format int`` exactly as a post-training model does.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from hnnx.errors import DataError, HnnxError
from hnnx.qat.module import GraphModule
from hnnx.runtime.data import Dataset, TensorSpec, load_dataset, spec_of
from hnnx.runtime.simulate import accuracy

LOSSES = ("ce", "distill")
"""``ce``: cross-entropy on labels; ``distill``: KL divergence to a teacher model's softened outputs."""


@dataclass
class EpochRecord:
    """One epoch of fine-tuning: mean training loss (NaN for epoch 0, before training), validation
    accuracy (fraction), whether it is the best so far, and wall time in seconds."""

    epoch: int
    loss: float
    validation_accuracy: float
    best: bool
    seconds: float


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the model with the best epoch's weights written back (the graph
    it was given, same nodes and names), every epoch's record, and the best epoch (0: training
    never beat the starting weights, which are then returned)."""

    model: onnx.ModelProto
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    validation_samples: int = 0
    validation_against: str = "labels"

    @property
    def initial_accuracy(self) -> float:
        return self.history[0].validation_accuracy

    @property
    def best_accuracy(self) -> float:
        return self.history[self.best_epoch].validation_accuracy

    def summary(self) -> str:
        """A few lines: validation accuracy before and after, and the best epoch."""
        against = "" if self.validation_against == "labels" else " (agreement with the teacher)"
        return (f"validation accuracy{against} on {self.validation_samples} samples: "
                f"{100 * self.initial_accuracy:.2f} % before, {100 * self.best_accuracy:.2f} % at the best "
                f"epoch ({self.best_epoch} of {len(self.history) - 1})")


def finetune(
    model: onnx.ModelProto | str | os.PathLike,
    data: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    labels: str | os.PathLike | np.ndarray | None = None,
    loss: str = "ce",
    teacher: onnx.ModelProto | str | os.PathLike | None = None,
    temperature: float = 2.0,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    validation: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``data`` and return it with the best epoch's weights.

    ``data``: training samples (a dataset path or dict of arrays keyed by graph input name, as
    ``hnnx simulate`` reads them) with their ``labels`` (default: the data's ``labels`` array);
    ``loss``: ``"ce"`` (cross-entropy on the labels) or ``"distill"`` (KL divergence from the
    ``teacher``'s outputs softened by ``temperature``, times ``temperature²``; the teacher is the
    float model, run once over the data in onnxruntime). The loss reads the first graph output in
    real units (times its ``hnnx.output_scale``; a time-major output averaged over time).
    ``lr``: Adam's step relative to each layer's weight magnitude (see
    :meth:`GraphModule.parameter_units`), decayed by a cosine over all steps. ``validation``: data
    scored after every epoch (default: ``validation_fraction`` of ``data``, held out); the best
    epoch — by validation accuracy, then validation loss — is kept, epoch 0 being the model as
    given. ``log`` receives one line per epoch; ``checkpoint``: a file the best model so far is
    written to (atomically) whenever an epoch beats it. Raises HnnxError on bad options or data.
    """
    from hnnx.model import save

    if loss not in LOSSES:
        raise HnnxError(f"unknown loss {loss!r} (known: {', '.join(LOSSES)})")
    if loss == "distill" and teacher is None:
        raise HnnxError("loss 'distill' needs a teacher model (the float model)")
    if epochs < 0 or batch_size < 1 or not lr > 0 or not temperature > 0:
        raise HnnxError(f"epochs ≥ 0, batch size ≥ 1, lr > 0 and temperature > 0 are needed; got epochs={epochs}, "
                        f"batch size={batch_size}, lr={lr}, temperature={temperature}")
    if validation is None and not 0 < validation_fraction < 1:
        raise HnnxError(f"validation fraction must lie in (0, 1) when no validation data is given, "
                        f"got {validation_fraction}")
    module = GraphModule(model)
    specs = [spec_of(vi) for vi in module.source.graph.input if vi.name in module.input_names]
    output_spec = spec_of(module.source.graph.output[0])
    train = load_dataset(data, specs, labels)
    targets = _teacher_outputs(teacher, train, specs) if teacher is not None else None
    if loss == "ce" and train.labels is None:
        raise DataError(f"{train.source}: loss 'ce' needs labels (a 'labels' array or --labels)")
    order = np.random.default_rng(seed).permutation(train.size)
    if validation is not None:
        held = load_dataset(validation, specs)
        train_index = order
        val_targets = _teacher_outputs(teacher, held, specs) if teacher is not None else None
        val_index = np.arange(held.size)
    else:
        cut = max(1, int(round(train.size * validation_fraction)))
        if cut >= train.size:
            raise DataError(f"{train.source}: {train.size} samples are too few to hold out a validation part")
        held, val_index, train_index, val_targets = train, order[:cut], order[cut:], targets
    if held.labels is None and val_targets is None:
        raise DataError(f"{held.source}: validation needs labels (or a teacher to agree with)")
    reference = held.labels[val_index] if held.labels is not None else val_targets[val_index].argmax(axis=1)

    def batch_loss(index: np.ndarray, source: Dataset, teacher_out: np.ndarray | None) -> torch.Tensor:
        scores = _scores(module, source, specs, index, output_spec)
        if loss == "ce":
            return torch.nn.functional.cross_entropy(scores, torch.from_numpy(source.labels[index]))
        soft = torch.softmax(torch.from_numpy(teacher_out[index]) / temperature, dim=1)
        return torch.nn.functional.kl_div(torch.log_softmax(scores / temperature, dim=1), soft,
                                          reduction="batchmean") * temperature**2

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            outputs, losses = [], []
            for start in range(0, len(val_index), batch_size):
                index = val_index[start:start + batch_size]
                outputs.append(_scores(module, held, specs, index, output_spec).numpy())
                if loss == "ce" and held.labels is not None or loss == "distill" and val_targets is not None:
                    losses.append(float(batch_loss(index, held, val_targets)) * len(index))
        scores = np.concatenate(outputs)
        return accuracy(scores, reference), (sum(losses) / len(val_index) if losses else math.nan)

    torch.manual_seed(seed)
    units = module.parameter_units()
    optimizer = torch.optim.Adam([{"params": [parameter], "lr": lr * units[key]}
                                  for key, parameter in module.parameters_dict.items()])
    steps_per_epoch = math.ceil(len(train_index) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))
    started = time.perf_counter()
    best_accuracy, best_loss = evaluate()
    best_state = copy.deepcopy(module.parameters_dict.state_dict())
    history = [EpochRecord(0, math.nan, best_accuracy, True, time.perf_counter() - started)]
    _say(log, history[0], epochs)
    best_epoch = 0
    shuffler = np.random.default_rng(seed + 1)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        module.train()
        total, count = 0.0, 0
        permutation = train_index[shuffler.permutation(len(train_index))]
        with tqdm(total=len(permutation), unit="sample", disable=not progress, leave=False,
                  desc=f"epoch {epoch}/{epochs}") as bar:
            for start in range(0, len(permutation), batch_size):
                index = permutation[start:start + batch_size]
                optimizer.zero_grad()
                value = batch_loss(index, train, targets)
                value.backward()
                optimizer.step()
                schedule.step()
                total += float(value.detach()) * len(index)
                count += len(index)
                bar.update(len(index))
                bar.set_postfix(loss=f"{total / count:.4f}")
        module.eval()
        val_accuracy, val_loss = evaluate()
        better = val_accuracy > best_accuracy or (val_accuracy == best_accuracy and val_loss < best_loss)
        if better:
            best_accuracy, best_loss, best_epoch = val_accuracy, val_loss, epoch
            best_state = copy.deepcopy(module.parameters_dict.state_dict())
            if checkpoint is not None:
                save(module.write_back(), checkpoint)
        history.append(EpochRecord(epoch, total / max(count, 1), val_accuracy, better, time.perf_counter() - started))
        _say(log, history[-1], epochs)
    module.parameters_dict.load_state_dict(best_state)
    return FinetuneResult(module.write_back(), history, best_epoch, len(val_index),
                          "labels" if held.labels is not None else "teacher")


def _scores(module: GraphModule, source: Dataset, specs: list[TensorSpec], index: np.ndarray,
            output_spec: TensorSpec) -> torch.Tensor:
    """The first graph output in real units for samples ``index`` of ``source``, ``[n, classes]``."""
    inputs = [torch.from_numpy(np.take(source.arrays[spec.name], index, axis=spec.batch_axis)) for spec in specs]
    scores = module.real_outputs(*inputs)[0]
    if output_spec.batch_axis == 1:  # time-major output: rate decoding
        scores = scores.mean(dim=0)
    return scores.reshape(scores.shape[0], -1)


def _teacher_outputs(teacher: onnx.ModelProto | str | os.PathLike, source: Dataset,
                     specs: list[TensorSpec]) -> np.ndarray:
    """The teacher's first output in real units over every sample of ``source`` (onnxruntime)."""
    from hnnx.model import load
    from hnnx.quantization import output_scales
    from hnnx.runtime.simulate import simulate

    if not isinstance(teacher, onnx.ModelProto):
        teacher = load(teacher)
    name = teacher.graph.output[0].name
    result = simulate(teacher, {spec.name: source.arrays[spec.name] for spec in specs})
    scores = result.outputs[name].astype(np.float32) * np.float32(output_scales(teacher).get(name, 1.0))
    if spec_of(teacher.graph.output[0]).batch_axis == 1:
        scores = scores.mean(axis=0)
    scores = scores.reshape(scores.shape[0], -1)
    if scores.shape[0] != source.size:
        raise DataError(f"teacher output {name!r} has {scores.shape[0]} samples for {source.size} inputs")
    return scores


def _say(log: Callable[[str], None] | None, record: EpochRecord, epochs: int) -> None:
    if log is None:
        return
    loss = "—" if math.isnan(record.loss) else f"{record.loss:.4f}"
    mark = "  (best)" if record.best else ""
    what = "before training" if record.epoch == 0 else f"epoch {record.epoch}/{epochs}"
    log(f"{what}: loss {loss}, validation accuracy {100 * record.validation_accuracy:.2f} %{mark} "
        f"[{record.seconds:.1f} s]")


__all__ = ["finetune", "FinetuneResult", "EpochRecord", "LOSSES"]
