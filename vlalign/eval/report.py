"""The demo's `report.md`: tables from the metrics of each objective run, vision vs. blank-image baseline."""

from __future__ import annotations

from vlalign.eval.alignment_command import alignment_markdown


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def headline(evaluation: dict) -> dict[str, float]:
    """One number per benchmark, the figure each benchmark is usually quoted by."""
    row = {}
    if "pope" in evaluation:
        for split, metrics in evaluation["pope"]["pope"].items():
            row[f"POPE {split} F1"] = metrics["f1"]
            row[f"POPE {split} acc"] = metrics["accuracy"]
    if "gqa" in evaluation:
        row["GQA-style acc"] = evaluation["gqa"]["by_type"]["all"]["accuracy"]
    if "sqa" in evaluation:
        row["ScienceQA-style MC acc"] = evaluation["sqa"]["by_type"]["all"]["accuracy"]
    if "mme" in evaluation:
        row["MME-style acc"] = evaluation["mme"]["mme"]["acc"]
        row["MME-style acc+"] = evaluation["mme"]["mme"]["acc_plus"]
    if "compositional_gqa" in evaluation:
        row["compositional GQA-style acc"] = evaluation["compositional_gqa"]["by_type"]["all"]["accuracy"]
    return row


def comparison_table(runs: dict[str, dict]) -> list[str]:
    """Rows: headline metrics; columns: each objective with its image and its blank-image baseline."""
    names = list(runs)
    header = "| metric | " + " | ".join(f"{n} (image) | {n} (blank image)" for n in names) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(names)]
    heads = {n: (headline(runs[n]["eval"]), headline(runs[n]["text_only_baseline"])) for n in names}
    for metric in heads[names[0]][0]:
        cells = [f"{_pct(heads[n][0][metric])} | {_pct(heads[n][1][metric])}" for n in names]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def alignment_rows(runs: dict[str, dict]) -> list[str]:
    """Stage-1 / stage-2 alignment diagnostics side by side, one column per objective."""
    names = [n for n in runs if runs[n].get("alignment")]
    if not names:
        return []
    lines = ["| diagnostic | " + " | ".join(f"{n} stage 1 | {n} stage 2" for n in names) + " |",
             "|---|" + "---:|---:|" * len(names)]
    measures = [("EOS modality gap", lambda r: f"{r['eos']['modality_gap']:.3f}"),
                ("EOS retrieval i2t@1 (%)", lambda r: _pct(r["eos"]["i2t@1"])),
                ("EOS retrieval t2i@1 (%)", lambda r: _pct(r["eos"]["t2i@1"])),
                ("gap score D", lambda r: f"{r['token']['gap_score_D']:.3f}"),
                ("TACS", lambda r: f"{r['token']['tacs']:.3f}"),
                ("probe: colour word of the object (%)",
                 lambda r: _pct(r["token"]["probe"]["color_accuracy"]) if "probe" in r["token"] else "-"),
                ("probe: shape word of the object (%)",
                 lambda r: _pct(r["token"]["probe"]["shape_accuracy"]) if "probe" in r["token"] else "-")]
    for label, cell in measures:
        lines.append(f"| {label} | " + " | ".join(f"{cell(runs[n]['alignment']['stage1'])} | "
                                                  f"{cell(runs[n]['alignment']['stage2'])}" for n in names) + " |")
    return lines


def detail_tables(name: str, run: dict) -> list[str]:
    lines = [f"### `{name}`: per question type (accuracy %, image vs. blank image)", "",
             "| benchmark | type | n | image | blank image |", "|---|---|---:|---:|---:|"]
    for benchmark, metrics in run["eval"].items():
        blank = run["text_only_baseline"][benchmark]["by_type"]
        for kind, cell in metrics["by_type"].items():
            lines.append(f"| {benchmark} | {kind} | {cell['n']} | {_pct(cell['accuracy'])} | "
                         f"{_pct(blank[kind]['accuracy'])} |")
    if "pope" in run["eval"]:
        lines += ["", f"### `{name}`: POPE (with images)", "",
                  "| negatives | acc | precision | recall | F1 | yes-ratio | n |", "|---|---:|---:|---:|---:|---:|---:|"]
        for split, m in run["eval"]["pope"]["pope"].items():
            lines.append(f"| {split} | {_pct(m['accuracy'])} | {_pct(m['precision'])} | {_pct(m['recall'])} | "
                         f"{_pct(m['f1'])} | {_pct(m['yes_ratio'])} | {m['n']} |")
    lines += ["", f"### `{name}`: training", ""]
    for stage in ("stage1", "stage2"):
        info = run[stage]
        lines.append(f"- {stage}: {info['steps']} steps, loss {info['first_loss']:.3f} -> {info['last_loss']:.3f}, "
                     f"{info['seconds']:.0f} s")
    lines += ["", f"### `{name}`: sample answers (held-out images)", "",
              "| image | question | gold | answer | answer with blank image |", "|---|---|---|---|---|"]
    for sample in run["samples"]:
        question = sample["question"].replace("\n", " ").replace("|", "/")
        lines.append(f"| {sample['image']} | {question} | {sample['gold']} | {sample['answer']} | "
                     f"{sample['blank_answer']} |")
    return lines


def render_report(runs: dict[str, dict], info: dict) -> str:
    lines = ["# vlalign demo report", "",
             f"Preset `{info['preset']}`; {info['machine']}; total {info['runtime_s'] / 60:.1f} min, "
             f"peak memory (RSS) {info['peak_rss_mb']:.0f} MB.", "",
             f"Models: vision `{info['vision_tower']}` ({info['visual_tokens']} visual tokens), LLM `{info['llm']}`. "
             f"World: {info['world_counts']}.", "",
             "The blank-image columns evaluate the same trained model with every image replaced by a blank "
             "(mean-colour) image: what the LLM gets right from the question alone. The gap is what vision adds.",
             "", "## Headline (%)", "", *comparison_table(runs), ""]
    if info.get("dual_encoder"):
        de = info["dual_encoder"]
        lines += ["## Demo dual encoder (EfficientNet-Lite0 + MiniLM-L6, trained heads)", "",
                  "Zero-shot retrieval on the held-out captions: " +
                  ", ".join(f"{k} {_pct(v)}%" for k, v in de["retrieval"].items()) +
                  f"; modality gap {de['modality_gap']:.3f}; {de['seconds']:.0f} s.", ""]
    if alignment_rows(runs):
        lines += ["## Alignment diagnostics (`vlalign eval alignment`, held-out captions)", "",
                  "EOS embeddings use seed 000's prompts; the probe asks which shapes-world word each visual "
                  "token is nearest to in the LLM's input-embedding space; chance levels are in each objective's section.", "",
                  *alignment_rows(runs), ""]
    for name, run in runs.items():
        lines += [f"## Objective `{name}`", "", *detail_tables(name, run), ""]
        for stage, result in (run.get("alignment") or {}).items():
            lines += [alignment_markdown(result, f"{name}/alignment_{stage}/",
                                         f"`{name}`: alignment after {stage.replace('stage', 'stage ')}"), ""]
    return "\n".join(lines)
