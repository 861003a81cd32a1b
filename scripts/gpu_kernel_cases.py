"""Cases for the EdgePruneSelect kernel harness (plugins/harness/select_harness.cu), checked
against the project's reference `exporter.pruning.select_tokens`.

Every method the plugin implements (`exporter.plugin_node.METHOD_IDS`) gets `per_method` cases,
alternating batch 1 and batch 8 and alternating random scores with tie-planted ones (a few
quantised levels, so many patches share a score and the tie rule decides). Method parameters
cycle through `CASE_PARAMS` (a method missing there runs with its defaults): a new plugin
method needs an id in METHOD_IDS and, if it has parameters worth varying, an entry here.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GRID = (24, 24)
LAYERS = 24
KEEPS = (64, 128, 192, 16, 96, 250, 400)
CASE_PARAMS: dict[str, list[dict]] = {
    "hivtp": [{}, {"regions": 3, "global_fraction": 0.25}, {"regions": 4, "global_fraction": 0.75}],
    "hiprune": [{}, {"alpha": 0.2, "buffer_edges": "discard"}, {"alpha": 0.05}],
    "hiprune++": [{}, {"alpha": 0.2, "beta": 0.2, "buffer_edges": "discard"}],
}


@dataclass
class Case:
    method: str
    keep: int
    params: dict
    batch: int
    ties: bool
    scores: np.ndarray  # (B, LAYERS, 1 + N) float32, CLS first
    similarity: np.ndarray | None  # (B, N) float32 for prompt-aware methods
    expected: np.ndarray  # (B, K') int64 from select_tokens

    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method} K={self.keep} batch={self.batch} {'ties' if self.ties else 'random'}" + \
            (f" ({extra})" if extra else "")


def kernel_methods() -> list[str]:
    from exporter.plugin_node import METHOD_IDS

    return list(METHOD_IDS)


def select_params(cfg) -> list[int]:
    """SelectParams (plugins/src/select_core.h) in declaration order, from the plugin's fields."""
    from exporter.plugin_node import plugin_fields

    f = plugin_fields(cfg)
    return [f["method"], f["keep"], f["grid"][0], f["grid"][1], len(cfg.layers), f.get("regions", 0),
            f.get("per_region_budget", 0), f.get("window", 0), f.get("num_anchors", 0), f.get("buffer_edges", 0),
            f.get("num_extra", 0)]


def _scores(rng: np.random.Generator, batch: int, ties: bool) -> np.ndarray:
    n = GRID[0] * GRID[1] + 1
    if not ties:
        return rng.random((batch, LAYERS, n), dtype=np.float32) / n
    # a few levels only: most patches tie with many others; some rows copied whole
    levels = rng.integers(1, 5)
    out = (rng.integers(0, levels + 1, (batch, LAYERS, n)) / np.float32(n)).astype(np.float32)
    out[:, 1::3] = out[:, 0:1]  # identical layers: HIVTP's sums tie exactly too
    return out


def _similarity(rng: np.random.Generator, batch: int, ties: bool) -> np.ndarray:
    n = GRID[0] * GRID[1]
    if ties:
        return (rng.integers(-2, 3, (batch, n)) / 4).astype(np.float32)
    return rng.uniform(-1, 1, (batch, n)).astype(np.float32)


def make_cases(per_method: int, seed: int = 0, methods: list[str] | None = None) -> list[Case]:
    from exporter.pruning import make_config, select_tokens

    rng = np.random.default_rng(seed)
    cases = []
    for method in methods or kernel_methods():
        variants = CASE_PARAMS.get(method, [{}])
        for i in range(per_method):
            batch, ties = (1 if i % 2 == 0 else 8), (i // 2) % 2 == 1
            keep, params = KEEPS[i % len(KEEPS)], variants[(i // len(KEEPS)) % len(variants)]
            try:
                cfg = make_config(method, keep, grid=GRID, num_layers=LAYERS, **params)
            except ValueError:  # e.g. K below regions^2 or too small for the anchors' buffers
                params = {}
                cfg = make_config(method, keep, grid=GRID, num_layers=LAYERS)
            scores = _scores(rng, batch, ties)
            sim = _similarity(rng, batch, ties) if cfg.method == "hiprune++" else None
            extra = {"text_similarity": torch.from_numpy(sim)} if sim is not None else {}
            expected = select_tokens(method, torch.from_numpy(scores), keep, grid=GRID, **params, **extra)
            cases.append(Case(method, keep, params, batch, ties, scores, sim, expected.numpy()))
    return cases


def _cfg(case: Case):
    from exporter.pruning import make_config

    return make_config(case.method, case.keep, grid=GRID, num_layers=LAYERS, **case.params)


def write_cases(cases: list[Case], path: Path) -> None:
    """The harness's EPSC file: rows are the method's layers without CLS, in the method's order."""
    with open(path, "wb") as f:
        f.write(b"EPSC" + struct.pack("<ii", 1, len(cases)))
        for case in cases:
            cfg = _cfg(case)
            rows = np.ascontiguousarray(case.scores[:, list(cfg.layers), 1:], dtype="<f4")
            f.write(struct.pack("<11i", *select_params(cfg)))
            f.write(struct.pack("<ii", case.batch, case.similarity is not None))
            f.write(rows.tobytes())
            if case.similarity is not None:
                f.write(np.ascontiguousarray(case.similarity, dtype="<f4").tobytes())


def read_outputs(path: Path, cases: list[Case]) -> list[np.ndarray]:
    data = Path(path).read_bytes()
    out, pos = [], 0
    for case in cases:
        (count,) = struct.unpack_from("<i", data, pos)
        pos += 4
        values = np.frombuffer(data, "<i4", count, pos)
        pos += 4 * count
        out.append(values.reshape(case.batch, -1).astype(np.int64))
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} bytes left after {len(cases)} cases")
    return out


def compare(cases: list[Case], outputs: list[np.ndarray]) -> dict:
    """Per method: cases, images, cases by batch, mismatching cases (first few described)."""
    report: dict[str, dict] = {}
    for case, got in zip(cases, outputs):
        r = report.setdefault(case.method, {"cases": 0, "images": 0, "batch_1": 0, "batch_8": 0, "tie_planted": 0,
                                            "mismatches": 0, "first_mismatches": []})
        r["cases"] += 1
        r["images"] += case.batch
        r[f"batch_{case.batch}"] = r.get(f"batch_{case.batch}", 0) + 1
        r["tie_planted"] += int(case.ties)
        if got.shape != case.expected.shape or not np.array_equal(got, case.expected):
            r["mismatches"] += 1
            if len(r["first_mismatches"]) < 5:
                bad = next((b for b in range(case.batch) if got.shape != case.expected.shape
                            or not np.array_equal(got[b], case.expected[b])), 0)
                r["first_mismatches"].append({"case": case.label(), "image": bad,
                                              "expected": case.expected[bad][:16].tolist(),
                                              "got": got[bad][:16].tolist() if got.ndim == 2 else got.tolist()[:16]})
    for r in report.values():
        r["identical"] = r["mismatches"] == 0
    return report


def timing_cases(keep: int = 128, batch: int = 8, seed: int = 1) -> list[Case]:
    """One batch-8 case per method at K = 128 (random scores) for the kernel timing."""
    from exporter.pruning import select_tokens

    rng = np.random.default_rng(seed)
    out = []
    for method in kernel_methods():
        scores = _scores(rng, batch, False)
        sim = _similarity(rng, batch, False) if method == "hiprune++" else None
        extra = {"text_similarity": torch.from_numpy(sim)} if sim is not None else {}
        expected = select_tokens(method, torch.from_numpy(scores), keep, grid=GRID, **extra).numpy()
        out.append(Case(method, keep, {}, batch, False, scores, sim, expected))
    return out
