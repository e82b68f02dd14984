"""Integer ``hnnx.LIF`` attributes as the fields of TianjicX's soma primitive P08, and back.

Only names change here; the neuron's equations stay in :class:`hnnx.ops.LIF` (P08's steps
1–7 are the LIF docstring's steps, without threshold noise and time windows).
"""

from __future__ import annotations

from typing import Any

from hnnx.ops.lif import state_range

RESET_CODES = {"hard": 0, "soft": 1, "soft_constant": 2, "none": 3}


def p08_fields(attrs: dict[str, Any]) -> dict[str, int]:
    """P08 fields of an integer-mode LIF (``attrs`` resolved): ``Vth0``, ``reset_mode`` (0 hard,
    1 soft, 2 soft_constant, 3 none), ``VR``, ``dV``, ``Vinit``, ``Vleaky_adpt_en``,
    ``Vleaky_alpha = round(256·α)``, ``Vleaky_beta``, ``VL`` (the state minimum when the LIF has
    no lower saturation), ``Vth_adpt_en``, ``Vth_alpha``, ``Vth_beta``, ``Vth_Incre``, ``Ref_len``,
    and the membrane width ``state_bits``."""
    lowest = state_range(attrs["state_bits"])[0]
    return {
        "Vth0": int(attrs["threshold"]),
        "reset_mode": RESET_CODES[attrs["reset_mode"]],
        "VR": int(attrs["v_reset"]),
        "dV": int(attrs["reset_decrement"]),
        "Vinit": int(attrs["v_init"]),
        "Vleaky_adpt_en": int(attrs["alpha"] != 1.0),
        "Vleaky_alpha": int(round(256 * attrs["alpha"])),
        "Vleaky_beta": int(attrs["beta"]),
        "VL": lowest if attrs.get("v_lower") is None else int(attrs["v_lower"]),
        "Vth_adpt_en": int(attrs["theta_alpha"] != 1.0),
        "Vth_alpha": int(round(256 * attrs["theta_alpha"])),
        "Vth_beta": int(attrs["theta_beta"]),
        "Vth_Incre": int(attrs["theta_increment"]),
        "Ref_len": int(attrs["refractory"]),
        "state_bits": int(attrs["state_bits"]),
    }


def lif_attributes(fields: dict[str, int]) -> dict[str, Any]:
    """The integer-mode LIF attributes a set of P08 fields stands for (inverse of :func:`p08_fields`)."""
    modes = {code: name for name, code in RESET_CODES.items()}
    lowest = state_range(fields["state_bits"])[0]
    return {
        "mode": "integer",
        "threshold": float(fields["Vth0"]),
        "reset_mode": modes[fields["reset_mode"]],
        "v_reset": float(fields["VR"]),
        "reset_decrement": float(fields["dV"]),
        "v_init": float(fields["Vinit"]),
        "alpha": fields["Vleaky_alpha"] / 256 if fields["Vleaky_adpt_en"] else 1.0,
        "beta": float(fields["Vleaky_beta"]),
        "v_lower": None if fields["VL"] == lowest else float(fields["VL"]),
        "theta_alpha": fields["Vth_alpha"] / 256 if fields["Vth_adpt_en"] else 1.0,
        "theta_beta": float(fields["Vth_beta"]),
        "theta_increment": float(fields["Vth_Incre"]),
        "refractory": int(fields["Ref_len"]),
        "state_bits": int(fields["state_bits"]),
    }
