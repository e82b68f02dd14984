"""ImageNet-size CNN graphs and samples for the quantization benchmark, built with torch and cached.

Three classic architectures, written here after their papers, with random weights whose
BatchNorm statistics are set by a few forward passes on the generated samples (so activations
have realistic ranges), exported as many tools export them: ``torch.onnx.export`` with the
TorchScript exporter (``dynamo=False``), opset 13, the batch fixed to 1 (no dynamic axes):

* ``resnet50`` — ResNet-50: bottleneck blocks [3, 4, 6, 3] with residual ``Add``;
* ``inception`` — Inception v1 (GoogLeNet): nine inception modules of four branches joined by
  ``Concat``, 1×1/3×3/5×5 convolutions and a 3×3 max-pool projection;
* ``densenet121`` — DenseNet-121: dense blocks [6, 12, 24, 16] of pre-activation layers
  (BatchNorm → ReLU → Conv), each layer fed the ``Concat`` of every earlier feature map, and
  average-pooling transitions.

Samples are standard-normal ``[3, 224, 224]`` images (as after ImageNet normalisation), in one
``.npz`` per sample count and in a directory of one ``.npz`` per sample (stored, uncompressed).
Everything lives under one cache directory and is built once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

GRAPHS = ("resnet50", "inception", "densenet121")
INPUT = "pixels"
OUTPUT = "logits"
IMAGE = (3, 224, 224)
OPSET = 13
CACHE_VERSION = "v1"  # bump when graphs or samples change
SEED = 2024


def cache_dir(root: Path) -> Path:
    folder = root / f"hnnx-bench-imagenet-{CACHE_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def graph_path(root: Path, name: str) -> Path:
    """The exported ONNX file of graph ``name``, built on first use."""
    path = cache_dir(root) / f"{name}.onnx"
    if not path.is_file():
        _export(name, path, calibration_samples(root, 16))
    return path


def calibration_samples(root: Path, count: int) -> np.ndarray:
    """The first ``count`` generated samples ``[count, 3, 224, 224]`` (float32), as an array."""
    with np.load(calibration_file(root, count)) as archive:
        return archive[INPUT]


def calibration_file(root: Path, count: int) -> Path:
    """An ``.npz`` file holding the first ``count`` samples under ``pixels``."""
    path = cache_dir(root) / f"calibration_{count}.npz"
    if not path.is_file():
        np.savez(_partial(path), **{INPUT: _generated(count, SEED)})
        _partial(path).rename(path)
    return path


def calibration_folder(root: Path, count: int) -> Path:
    """A directory of ``count`` ``.npz`` files of one sample each (the first ``count`` samples)."""
    folder = cache_dir(root) / f"calibration_files_{count}"
    if not (folder / "done").is_file():
        folder.mkdir(exist_ok=True)
        samples = _generated(count, SEED)
        for index, sample in enumerate(samples):
            np.savez(folder / f"sample_{index:05d}.npz", **{INPUT: sample[None]})
        (folder / "done").write_text("complete\n")
    return folder


def evaluation_samples(root: Path, count: int = 16) -> np.ndarray:
    """Held-out samples (another seed) on which output SQNR is measured."""
    path = cache_dir(root) / f"evaluation_{count}.npz"
    if not path.is_file():
        np.savez(_partial(path), **{INPUT: _generated(count, SEED + 1)})
        _partial(path).rename(path)
    with np.load(path) as archive:
        return archive[INPUT]


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial.npz")


def _generated(count: int, seed: int) -> np.ndarray:
    """Samples ``0..count-1`` of one stream: the first ``n`` samples do not depend on ``count``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.standard_normal(IMAGE, dtype=np.float32) for _ in range(count)])


# ---------------------------------------------------------------------- export
def _export(name: str, path: Path, statistics_samples: np.ndarray) -> None:
    import torch

    torch.manual_seed(SEED)
    net = {"resnet50": _resnet50, "inception": _inception_v1, "densenet121": _densenet121}[name]()
    _set_batchnorm_statistics(net, torch.from_numpy(statistics_samples))
    net.eval()
    partial = path.with_name(path.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (torch.from_numpy(statistics_samples[:1]),), str(partial), dynamo=False,
                          opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT])
    partial.rename(path)


def _set_batchnorm_statistics(net: "torch.nn.Module", samples: "torch.Tensor") -> None:
    """Running mean/variance of every BatchNorm from forward passes in training mode (cumulative
    average), so that the random network's activations stay in realistic ranges."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    net.train()
    with torch.no_grad():
        for batch in samples.split(8):
            net(batch)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> "torch.nn.Sequential":
    from torch import nn

    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def _resnet50() -> "torch.nn.Module":
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = 4 * width
            self.body = nn.Sequential(_conv_bn(cin, width, 1), _conv_bn(width, width, 3, stride),
                                      _conv_bn(width, cout, 1, relu=False))
            self.shortcut = (_conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout
                             else nn.Identity())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.shortcut(x))

    blocks: list[nn.Module] = []
    cin = 64
    for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(count):
            blocks.append(Bottleneck(cin, width, stride if index == 0 else 1))
            cin = 4 * width
    return nn.Sequential(_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), *blocks, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2048, 1000))


def _inception_v1() -> "torch.nn.Module":
    import torch
    from torch import nn

    class Inception(nn.Module):
        def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> None:
            super().__init__()
            self.branches = nn.ModuleList([
                _conv_bn(cin, c1, 1),
                nn.Sequential(_conv_bn(cin, c3r, 1), _conv_bn(c3r, c3, 3)),
                nn.Sequential(_conv_bn(cin, c5r, 1), _conv_bn(c5r, c5, 5)),
                nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(cin, pool, 1)),
            ])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([branch(x) for branch in self.branches], 1)

    def pool() -> nn.Module:
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    return nn.Sequential(
        _conv_bn(3, 64, 7, 2), pool(), _conv_bn(64, 64, 1), _conv_bn(64, 192, 3), pool(),
        Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool(),
        Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
        Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
        Inception(528, 256, 160, 320, 32, 128, 128), pool(),
        Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(1024, 1000))


def _densenet121() -> "torch.nn.Module":
    import torch
    from torch import nn

    growth, bottleneck = 32, 4

    class DenseLayer(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                                      nn.Conv2d(cin, bottleneck * growth, 1, bias=False),
                                      nn.BatchNorm2d(bottleneck * growth), nn.ReLU(inplace=True),
                                      nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False))

        def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
            return self.body(torch.cat(features, 1))

    class DenseBlock(nn.Module):
        def __init__(self, cin: int, count: int) -> None:
            super().__init__()
            self.layers = nn.ModuleList([DenseLayer(cin + i * growth) for i in range(count)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = [x]
            for layer in self.layers:
                features.append(layer(features))
            return torch.cat(features, 1)

    stages: list[nn.Module] = [_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    channels = 64
    for index, count in enumerate((6, 12, 24, 16)):
        stages.append(DenseBlock(channels, count))
        channels += count * growth
        if index < 3:
            stages += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                       nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            channels //= 2
    stages += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(channels, 1000)]
    return nn.Sequential(*stages)
