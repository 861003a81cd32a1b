#!/usr/bin/env python
"""The GPU check: everything a lent GPU should tell us, in one run of under 8 minutes, one JSON.

    bash scripts/gpu_check.sh                  # on the device machine (writes $OUT/gpu_check.json)
    bash scripts/gpu_check.sh --cpu-dry-run    # here: every step on the tiny model, no GPU

Steps (each one timed; a failing step is recorded and the next one still runs, and the JSON is
rewritten after every step, so a run cut short still reports what it did):
1. environment: GPU, driver, compute capability, CUDA/torch/transformers versions;
2. kernel build: plugins/harness/select_harness.cu + plugins/src/kernel.cu with nvcc for the
   device's architecture (no TensorRT). Dry run: the same nvcc build for sm_90 (compile only)
   and the host build with g++, which runs the next steps;
3. kernel cases: >= 200 random and tie-planted cases per plugin method at batches 1 and 8,
   indices compared with `exporter.pruning.select_tokens` (scripts/gpu_kernel_cases.py);
4. kernel timing: one batch of 8 at K = 128 per method, microseconds per launch (target < 20);
5. 7B TTFT: the exported vision module + HF LLaMA prefill in fp16, 576 vs K = 64/128/192 visual
   tokens + 60 text tokens, ratio to 576 (target <= 0.40 at K = 128), decode tokens/s
   (scripts/gpu_ttft.py). Dry run: the 7B path in fp16 on PyTorch's meta device (shapes, dtypes
   and device placement without data), then tiny-llava in fp32 on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

HARNESS = ROOT / "plugins" / "harness" / "select_harness.cu"
KERNEL = ROOT / "plugins" / "src" / "kernel.cu"
INCLUDE = ROOT / "plugins" / "src"
DRY_RUN_ARCH = "90"
TARGETS = {"kernel_us_batch8": 20.0, "ttft_ratio_k128": 0.40}


def log(msg: str) -> None:
    print(msg, flush=True)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


# ---- steps --------------------------------------------------------------------------------------
def environment(ctx: dict) -> dict:
    import torch
    import transformers

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
        ctx["arch"] = f"{props.major}{props.minor}"
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,"
                              "utilization.gpu", "--format=csv,noheader"], capture_output=True, text=True)
        out["nvidia_smi"] = smi.stdout.strip()
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)
    ctx["nvcc"] = nvcc
    if nvcc:
        out["nvcc"] = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return out


def kernel_build(ctx: dict) -> dict:
    build = Path(ctx["build"])
    out = {}
    if ctx["nvcc"] is None:
        raise RuntimeError("nvcc not found (PATH, /usr/local/cuda/bin)")
    arch = ctx.get("arch") or DRY_RUN_ARCH
    cuda_bin = build / "select_harness_cuda"
    cmd = [ctx["nvcc"], "-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
           "-I", str(INCLUDE), str(HARNESS), str(KERNEL), "-o", str(cuda_bin)]
    started = time.perf_counter()
    proc = _run(cmd)
    out["cuda"] = {"command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""), "arch": f"sm_{arch}",
                   "seconds": round(time.perf_counter() - started, 1),
                   "ptxas": [line for line in proc.stderr.splitlines() if "registers" in line or "smem" in line]}
    if ctx["dry_run"]:
        host_bin = build / "select_harness_host"
        cmd = ["g++", "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-x", "c++", "-I", str(INCLUDE), str(HARNESS),
               "-o", str(host_bin)]
        _run(cmd)
        out["host"] = {"command": " ".join(cmd[1:]).replace(str(ROOT) + "/", "")}
        ctx["harness"] = host_bin
    else:
        ctx["harness"] = cuda_bin
    return out


def kernel_cases(ctx: dict) -> dict:
    from gpu_kernel_cases import compare, make_cases, read_outputs, write_cases

    build = Path(ctx["build"])
    started = time.perf_counter()
    cases = make_cases(ctx["cases_per_method"])
    generated = time.perf_counter() - started
    write_cases(cases, build / "cases.bin")
    started = time.perf_counter()
    _run([str(ctx["harness"]), "run", str(build / "cases.bin"), str(build / "out.bin")])
    report = compare(cases, read_outputs(build / "out.bin", cases))
    return {"harness": "host build (dry run)" if ctx["dry_run"] else "CUDA", "reference_seconds": round(generated, 1),
            "harness_seconds": round(time.perf_counter() - started, 2), "methods": report,
            "all_identical": all(r["identical"] for r in report.values())}


def kernel_timing(ctx: dict) -> dict:
    from gpu_kernel_cases import compare, read_outputs, timing_cases, write_cases

    build = Path(ctx["build"])
    cases = timing_cases()
    write_cases(cases, build / "timing.bin")
    _run([str(ctx["harness"]), "run", str(build / "timing.bin"), str(build / "timing_out.bin")])
    checked = compare(cases, read_outputs(build / "timing_out.bin", cases))
    proc = _run([str(ctx["harness"]), "time", str(build / "timing.bin"), str(ctx["timing_reps"])])
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    out = {}
    for case, row in zip(cases, rows):
        row.update(method=case.method, identical=checked[case.method]["identical"],
                   target_us=TARGETS["kernel_us_batch8"], met=row["median_us"] < TARGETS["kernel_us_batch8"])
        out[case.method] = row
    if ctx["dry_run"]:
        out["note"] = "host build: times of the sequential CPU loop, not of the kernel"
    return out


def ttft(ctx: dict) -> dict:
    from gpu_ttft import measure

    if ctx["dry_run"]:
        # the real run's shapes, dtypes and device handling on the meta device (no data, no time),
        # then the tiny model on the CPU for numbers that go through the same code
        meta = measure("llava-1.5-7b", "meta", "fp16", reps=1, decode_tokens=2, log=log)
        result = measure("tiny-llava", "cpu", "fp32", keeps=(64, 128, 192), reps=2, decode_tokens=4, log=log)
        result["meta_device_check"] = {"model": meta["model"], "precision": "fp16", "passed": True,
                                       "vision_outputs": [[v["method"], v["keep"], v["kept_shape"]] for v in meta["vision"]]}
    else:
        result = measure("llava-1.5-7b", "cuda", "fp16", reps=ctx["ttft_reps"], decode_tokens=32, log=log)
    for name, rows in result["decoders"].items():
        for row in rows:
            if row["keep"] in (128, 131):
                row["target_ratio"] = TARGETS["ttft_ratio_k128"]
                row["met"] = row["ttft_ratio_to_576"] <= TARGETS["ttft_ratio_k128"]
    return result


STEPS = [("environment", environment), ("kernel_build", kernel_build), ("kernel_cases", kernel_cases),
         ("kernel_timing", kernel_timing), ("ttft", ttft)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="every step on the tiny model, without a GPU")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "engines" / "gpu_check")) / "gpu_check.json")
    p.add_argument("--cases-per-method", type=int, default=200)
    p.add_argument("--timing-reps", type=int, default=1000)
    p.add_argument("--ttft-reps", type=int, default=20)
    p.add_argument("--steps", nargs="+", choices=[s for s, _ in STEPS], help="default: all")
    args = p.parse_args(argv)
    started = time.perf_counter()
    report = {"check": "edgeprune GPU check", "dry_run": args.cpu_dry_run, "targets": TARGETS,
              "command": "bash scripts/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
              "steps": {}}
    with tempfile.TemporaryDirectory(prefix="edgeprune-gpu-check-") as build:
        ctx = {"dry_run": args.cpu_dry_run, "build": build, "cases_per_method": args.cases_per_method,
               "timing_reps": 50 if args.cpu_dry_run else args.timing_reps, "ttft_reps": args.ttft_reps}
        for name, step in STEPS:
            if args.steps and name not in args.steps and name != "environment":
                continue
            log(f"== {name}")
            t0 = time.perf_counter()
            try:
                report[name] = step(ctx)
                status = "ok"
            except Exception as exc:  # record and go on: one JSON must come back whatever fails
                report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
                status = "failed"
                log(f"   FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            report["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
            report["total_seconds"] = round(time.perf_counter() - started, 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    summary(report)
    log(f"wrote {args.out}")
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


def summary(report: dict) -> None:
    log("\n== summary" + (" (CPU dry run)" if report["dry_run"] else ""))
    for name, s in report["steps"].items():
        log(f"  {name:<14} {s['status']:<7} {s['seconds']:>7.1f} s")
    cases = report.get("kernel_cases", {}).get("methods", {})
    for method, r in cases.items():
        verdict = "identical" if r["identical"] else f"{r['mismatches']} MISMATCHES"
        log(f"  kernel {method:<10} {r['cases']} cases ({r['batch_1']} x batch 1, {r['batch_8']} x batch 8, "
            f"{r['tie_planted']} tie-planted): {verdict}")
    for method, r in report.get("kernel_timing", {}).items():
        if isinstance(r, dict) and "median_us" in r:
            log(f"  kernel {method:<10} batch 8, K=128: {r['median_us']:.2f} us per launch (median)")
    for name, rows in report.get("ttft", {}).get("decoders", {}).items():
        for row in rows:
            log(f"  {name} {row['method']:<8} K={row['keep']:<4} TTFT {row['ttft_ms']:8.2f} ms  "
                f"ratio {row['ttft_ratio_to_576']:.3f}  decode {row['decode_tokens_per_s']:.1f} tok/s")
    log(f"  total {report.get('total_seconds', 0):.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
