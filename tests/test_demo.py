"""`vlalign demo --quick`: the README's main job end to end at CI size, with the packaged models."""

import json

from vlalign.cli import main
from vlalign.demo.presets import DEMO_SETS


def test_quick_demo_writes_report_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--objectives",
                 "generative,generative+eos_contrastive+prompt,generative+sea,xformer,generative+token_drop"]) == 0
    printed = capsys.readouterr().out
    assert "estimated" in printed and str(out / "report.md") in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["generative", "generative+eos_contrastive+prompt", "generative+sea", "xformer",
                             "generative+token_drop"]
    sea_log = [json.loads(line) for line in
               (out / "generative+sea" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["sea_pairs"] >= 2 for row in sea_log)  # labels were made, read and sampled
    assert metrics["generative+sea"]["sea_labels"]["images"] == 48
    contrastive_log = (out / "generative+eos_contrastive+prompt" / "stage1" / "metrics.jsonl").read_text()
    assert '"eos_contrastive"' in contrastive_log and '"eos_contrastive_logit_scale"' in contrastive_log
    assert '"eos_contrastive"' not in (out / "generative" / "stage1" / "metrics.jsonl").read_text()
    run = metrics["generative"]
    assert run["visual_tokens"] == 49
    for evaluation in (run["eval"], run["text_only_baseline"]):
        assert set(evaluation) == set(DEMO_SETS)
        for name, result in evaluation.items():
            assert 0.0 <= result["by_type"]["all"]["accuracy"] <= 1.0 and result["by_type"]["all"]["n"] > 0
        assert set(evaluation["pope"]["metrics"]["splits"]) == {"random", "popular", "adversarial"}
        assert evaluation["sqa"]["benchmark"] == "scienceqa" and evaluation["compositional_gqa"]["benchmark"] == "gqa"
        for category in evaluation["mme"]["metrics"]["categories"].values():  # official MME: pairs kept whole
            assert 0.0 <= category["acc_plus"] <= category["acc"] <= 1.0 and category["questions"] == 2 * category["images"]
        assert 0.0 <= evaluation["mme"]["headline"]["MME perception"] <= 800.0  # 4 perception categories
        assert set(evaluation["gqa"]["lmms_eval_headline"]) == {"GQA acc"}
    assert run["stage1"]["steps"] > 0 and run["stage2"]["steps"] > 0
    assert run["samples"] and all(isinstance(s["answer"], str) for s in run["samples"])

    info = json.loads((out / "run.json").read_text())
    assert info["preset"] == "quick" and info["runtime_s"] > 0 and info["peak_rss_mb"] > 100
    assert 0.0 <= info["dual_encoder"]["retrieval"]["i2t@1"] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "POPE adversarial F1" in report and "POPE mean F1" in report
    assert "MME perception" in report and "SQA-IMG acc" in report and "blank image" in report
    assert (out / "generative" / "eval" / "pope" / "answers.jsonl").is_file()  # the answers, LLaVA's format
    assert "SEA patch labels" in report
    assert f"vlalign serve --checkpoint {out}/generative/stage2" in report and "vlalign export" in report

    # throughput settings: packed batches and the tower's features cached once for every run and stage; the
    # token-drop run drops in stage 1 only
    import yaml

    def saved(run, stage):
        return yaml.safe_load((out / run / stage / "final" / "config.yaml").read_text())

    assert saved("generative", "stage1")["data"]["packing"] and saved("generative", "stage2")["data"]["packing"]
    assert saved("generative", "stage1")["data"]["vision_feature_cache"] == str(out / "vision_features")
    assert [saved("generative+token_drop", stage)["train"]["visual_token_drop"] for stage in ("stage1", "stage2")] \
        == [0.5, 0.0] and saved("generative", "stage1")["train"]["visual_token_drop"] == 0.0
    assert metrics["generative+token_drop"]["stage1_train"] == {"visual_token_drop": 0.5}
    assert len(list((out / "vision_features").glob("*/shard-*.json"))) == 1  # one build, read by every later stage

    # X-Former: demo MAE -> pre-training (4 terms, no LLM) -> retrieval -> LLM alignment -> instruction tuning
    xformer = metrics["xformer"]
    assert xformer["visual_tokens"] == 32 and xformer["mae"]["images"] == 48
    assert set(xformer["terms"]) == {"itc", "itm", "itg", "reconstruction"}
    assert xformer["retrieval"]["pairs"] == 16 and 0.0 <= xformer["retrieval"]["TR@1"] <= 1.0
    align_log = (out / "xformer" / "stage1" / "metrics.jsonl").read_text()
    assert '"generative"' in align_log and '"itc"' not in align_log
    assert (out / "xformer" / "reconstruction_curve.png").stat().st_size > 1000
    assert "## Q-Former / X-Former" in report and "xformer/reconstruction_curve.png" in report



def test_later_demo_calls_keep_earlier_runs_of_the_same_preset(tmp_path):
    from vlalign.demo.run import earlier_runs

    (tmp_path / "metrics.json").write_text(json.dumps({
        "generative": {"preset": "full", "seed": 0, "eval": {}},
        "generative+cg_contrastive": {"preset": "quick", "seed": 0, "eval": {}},  # other preset: dropped
        "generative+eos_contrastive": {"preset": "full", "seed": 1, "eval": {}},  # other seed: dropped
        "no-longer-a-demo-run": {"preset": "full", "seed": 0}}))
    assert list(earlier_runs(tmp_path, "full", 0)) == ["generative"]
    assert earlier_runs(tmp_path / "absent", "full", 0) == {}


def test_unknown_demo_objective_is_named():
    import pytest

    from vlalign.demo.recipes import resolve_objectives
    from vlalign.errors import ConfigError

    assert resolve_objectives(None) == ["generative"]
    assert "generative+cg_contrastive" in resolve_objectives(["all"])
    with pytest.raises(ConfigError, match="generative\\+sea_typo"):
        resolve_objectives(["generative+sea_typo"])
