"""`vlalign demo --quick`: the README's main job end to end at CI size, with the packaged models."""

import json

from vlalign.cli import main
from vlalign.demo import TEST_SETS


def test_quick_demo_writes_report_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "estimated" in printed and str(out / "report.md") in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["generative"]
    run = metrics["generative"]
    assert run["visual_tokens"] == 49
    for evaluation in (run["eval"], run["text_only_baseline"]):
        assert set(evaluation) == set(TEST_SETS)
        for name, result in evaluation.items():
            assert 0.0 <= result["by_type"]["all"]["accuracy"] <= 1.0 and result["by_type"]["all"]["n"] > 0
        assert set(evaluation["pope"]["pope"]) == {"random", "popular", "adversarial"}
        assert 0.0 <= evaluation["mme"]["mme"]["acc_plus"] <= evaluation["mme"]["mme"]["acc"] <= 1.0
    assert run["stage1"]["steps"] > 0 and run["stage2"]["steps"] > 0
    assert run["samples"] and all(isinstance(s["answer"], str) for s in run["samples"])

    info = json.loads((out / "run.json").read_text())
    assert info["preset"] == "quick" and info["runtime_s"] > 0 and info["peak_rss_mb"] > 100
    assert 0.0 <= info["dual_encoder"]["retrieval"]["i2t@1"] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Headline (%)" in report and "POPE adversarial F1" in report and "blank image" in report

