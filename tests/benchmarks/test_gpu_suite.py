"""`benchmarks/gpu_suite.sh --dry-run` works without a GPU and names every step; its report helper reads results."""

import json
import subprocess
from pathlib import Path

from benchmarks.gpu_report import report
from tests.cli_helpers import REPO


def test_dry_run_names_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    result = subprocess.run(["bash", str(REPO / "benchmarks/gpu_suite.sh"), "--dry-run", "--out", str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for step in ("preflight", "gpu-tests", "throughput", "report"):
        assert f" {step} (limit " in text, text
    for covered in ("bf16-mixed", "16-mixed", "--model.compile true", "pad_to_multiple_of=8", "perf/mfu",
                    "predict", "src.export", "pytest -m gpu tests/test_gpu.py", "--model bert-base-geometry",
                    "--max-tokens", "c_compile", "--precision bf16", "--no-index --find-links",
                    f"{out}/gpu_suite.json", f"{out}/gpu_suite.md"):
        assert covered in text, covered
    limits = [int(line.split("(limit ")[1].split(" s)")[0]) for line in text.splitlines() if "(limit " in line]
    assert len(limits) == 4 and sum(limits) <= 8 * 60
    assert not out.exists()  # a dry run writes nothing


def test_report_combines_steps_tests_and_throughput(tmp_path: Path) -> None:
    (tmp_path / "throughput").mkdir()
    (tmp_path / "steps.tsv").write_text("gpu-tests\t1\t95\tpython -m pytest -m gpu\n")
    (tmp_path / "preflight.json").write_text(json.dumps({"device": "NVIDIA H200", "torch": "2.13.0"}))
    (tmp_path / "gpu_tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_gpu" name="test_bf16_mixed_fit" time="12.5"/>'
        '<testcase classname="tests.test_gpu" name="test_16_mixed_fit" time="3.0"><failure message="boom">x'
        "</failure></testcase></testsuite></testsuites>")
    (tmp_path / "throughput" / "results.json").write_text(json.dumps({"results": [{"variant": "c"}]}))
    (tmp_path / "throughput" / "results.md").write_text("| variant |\n|---|\n| (c) |\n")
    assert report(tmp_path) == 0
    suite = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [t["outcome"] for t in suite["tests"]] == ["passed", "failed"]
    assert suite["steps"][0] == {"name": "gpu-tests", "exit_code": 1, "seconds": 95,
                                 "command": "python -m pytest -m gpu"}
    markdown = (tmp_path / "gpu_suite.md").read_text()
    assert "NVIDIA H200" in markdown and "| (c) |" in markdown
    assert "| test_16_mixed_fit | failed | 3.0 | boom |" in markdown
