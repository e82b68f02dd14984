"""Front ends that bring models from other frameworks into hnnx ONNX graphs.

``hnnx.frontends.torch``: PyTorch modules for every hnnx op, and ``export``.
``hnnx.frontends.nir``: ``import_nir`` — a NIR graph (``.nir``) as an hnnx model, with a report.
"""
