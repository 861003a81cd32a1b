"""Activation-aware weight quantization (AWQ): per-input-channel scales searched per layer.

For a group of linear layers that read the same input X (T, K), AWQ multiplies the weights'
input columns by s (K,) and divides X by s, which leaves X W^T unchanged in exact arithmetic but
lets the few channels where |X| is large keep more precision after rounding W * s. The division
is folded into whatever produces X, so the graph gains no operation:

    group     reads                      1/s folded into
    qkv       input_layernorm output     input_layernorm.weight
    o         attention output           v_proj rows (only without grouped-query attention)
    gate_up   post_attention_layernorm   post_attention_layernorm.weight
    down      act(gate) * up             up_proj rows

s = mean|X|^alpha (normalised to geometric mean 1), alpha on a grid in [0, 1], chosen by the
squared output error of the quantized group on the calibration activations; alpha = 0 is plain
round-to-nearest, so AWQ never does worse than RTN on the calibration data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .quantize import QuantSpec, fake_quantize

GRID = 20  # alpha = 0, 1/20, ..., 1


@dataclass(frozen=True)
class Group:
    name: str
    reads: str  # key of the captured input
    linears: tuple[str, ...]  # HF names inside the layer
    fold_into: str  # a norm weight (vector) or a linear's rows


GROUPS = (
    Group("qkv", "qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm.weight"),
    Group("o", "o", ("self_attn.o_proj",), "self_attn.v_proj.weight"),
    Group("gate_up", "gate_up", ("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm.weight"),
    Group("down", "down", ("mlp.down_proj",), "mlp.up_proj.weight"),
)


def _output_error(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor, spec: QuantSpec) -> float:
    """sum over the group of ||X W^T - (X / s) Q(W * s)^T||^2 (float32)."""
    err = 0.0
    xs = x / s
    for w in weights:
        ref = x @ w.T
        wq = fake_quantize((w * s).T.numpy(), spec, "float32")  # (K, N)
        err += float(((xs @ torch.from_numpy(wq)) - ref).pow(2).sum())
    return err


def search_scale(x: torch.Tensor, weights: list[torch.Tensor], spec: QuantSpec,
                 grid: int = GRID) -> tuple[torch.Tensor, dict[str, float]]:
    """x (T, K), weights [(N_i, K)] float32 -> (s (K,), {"rtn": error, "awq": error, "alpha": a})."""
    x = x.float()
    weights = [w.float() for w in weights]
    mean_abs = x.abs().mean(dim=0).clamp(min=1e-5)
    best = (float("inf"), None, 0.0)
    rtn = None
    for step in range(grid + 1):
        alpha = step / grid
        s = mean_abs.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = _output_error(x, weights, s, spec)
        if step == 0:
            rtn = err
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], {"rtn": rtn, "awq": best[0], "alpha": best[2]}


def apply_awq(w: dict[str, torch.Tensor], captured: dict[str, torch.Tensor], spec: QuantSpec,
              gqa: bool) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Layer weights (HF names) -> scaled copies (only the tensors that change) and, per group,
    the calibration errors of RTN and AWQ. `gqa`: kv heads < heads, the `o` group is skipped
    (v_proj's rows do not map one to one onto o_proj's columns)."""
    out = dict(w)
    report = {}
    for group in GROUPS:
        if group.name == "o" and gqa:
            continue
        x = captured[group.reads]
        weights = [out[f"{n}.weight"].float() for n in group.linears]
        s, errors = search_scale(x, weights, spec)
        report[group.name] = errors
        dtype = out[f"{group.linears[0]}.weight"].dtype
        for n in group.linears:
            out[f"{n}.weight"] = (out[f"{n}.weight"].float() * s[None, :]).to(dtype)
        target = out[group.fold_into]
        if target.dim() == 1:  # a norm weight: its output is X
            out[group.fold_into] = (target.float() / s).to(target.dtype)
        else:  # a linear whose output rows are X's channels
            out[group.fold_into] = (target.float() / s[:, None]).to(target.dtype)
    return out, report


def summarize(reports: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Total calibration output error of RTN and AWQ over all layers and groups."""
    rtn = sum(e["rtn"] for r in reports for e in r.values())
    awq = sum(e["awq"] for r in reports for e in r.values())
    return {"rtn_output_sq_error": rtn, "awq_output_sq_error": awq,
            "awq_over_rtn": (awq / rtn) if rtn else float(np.nan)}
