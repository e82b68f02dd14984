"""Print the hnnx op reference (Markdown), generated from the op declarations.

    python -m hnnx.ops > docs/ops.md
"""

from hnnx.ops import op_reference_markdown

print("# hnnx op reference\n")
print("Generated from the op declarations by `python -m hnnx.ops > docs/ops.md`; do not edit by hand.\n")
print(op_reference_markdown(), end="")
