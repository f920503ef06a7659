"""The demo's `report.md`: tables from the metrics of each objective run, vision vs. blank-image baseline."""

from __future__ import annotations

from vlalign.eval.alignment_command import alignment_markdown


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def headline(evaluation: dict, scoring: str = "headline") -> dict[str, float]:
    """The figures each benchmark is quoted by (percent, MME in its points): the official scoring's, or
    with scoring="lmms_eval_headline" lmms-eval's on the same answers."""
    row = {}
    for name, result in evaluation.items():
        prefix = "compositional " if name.startswith("compositional") else ""
        row.update({prefix + key: value for key, value in result[scoring].items() if key != "SQA acc"})
    return row


def comparison_table(runs: dict[str, dict]) -> list[str]:
    """Rows: headline metrics; columns: objectives; each cell "with image (blank image)"."""
    names = list(runs)
    lines = ["| metric | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---:|" * len(names)]
    heads = {n: (headline(runs[n]["eval"]), headline(runs[n]["text_only_baseline"])) for n in names}
    for metric in heads[names[0]][0]:
        cells = [f"{heads[n][0][metric]:.1f} ({heads[n][1][metric]:.1f})" for n in names]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


ALIGNMENT_COLUMNS = (
    ("EOS gap", lambda r: f"{r['eos']['modality_gap']:.3f}"),
    *((f"EOS {key} %", lambda r, key=key: _pct(r["eos"][key]) if key in r["eos"] else "-")
      for key in ("i2t@1", "t2i@1", "i2t@5", "t2i@5")),
    ("D", lambda r: f"{r['token']['gap_score_D']:.3f}"),
    ("TACS", lambda r: f"{r['token']['tacs']:.3f}"),
    ("probe colour %", lambda r: _pct(r["token"]["probe"]["color_accuracy"]) if "probe" in r["token"] else "-"),
    ("probe shape %", lambda r: _pct(r["token"]["probe"]["shape_accuracy"]) if "probe" in r["token"] else "-"),
    ("token/word norm", lambda r: f"{r['token']['norm_ratio']:.2f}"),
)


def alignment_rows(runs: dict[str, dict]) -> list[str]:
    """One row per objective and stage, one column per diagnostic."""
    names = [n for n in runs if runs[n].get("alignment")]
    if not names:
        return []
    lines = ["| objective | after | " + " | ".join(label for label, _ in ALIGNMENT_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(ALIGNMENT_COLUMNS)]
    for name in names:
        for stage, result in runs[name]["alignment"].items():
            cells = " | ".join(cell(result) for _, cell in ALIGNMENT_COLUMNS)
            lines.append(f"| `{name}` | {stage.replace('stage', 'stage ')} | {cells} |")
    return lines


def sea_label_lines(name: str, summary: dict) -> list[str]:
    """The offline SEA labels the run trained with: SEA Sec. 5.1 / Fig. 6 statistics."""
    use, scores = summary["utilisation"], summary["label_scores"]
    common = ", ".join(f"{word} ({count})" for word, count in list(summary["most_common_top1"].items())[:10])
    return [f"### `{name}`: SEA patch labels (`vlalign label-patches`)", "",
            f"{summary['images']} images x {summary['grid'][0]}x{summary['grid'][1]} patches, top-{summary['top_n']} of "
            f"{summary['words']:,} words: {100 * use['any_label']:.1f}% of the list used as any label, "
            f"{100 * use['top1']:.1f}% as a top-1 label; mean label score {scores['mean']:.3f}; "
            f"{100 * summary['negative_share']:.1f}% of top-n candidates below 0 and dropped; "
            f"{summary['patches_without_label']} patches without a label. Most frequent top-1 labels: {common}."]


def query_rows(runs: dict[str, dict]) -> list[str]:
    """Seed 002's claims side by side: counting, existence, zero-shot retrieval after pre-training, terms."""
    names = [n for n in runs if runs[n].get("retrieval")]
    if not names:
        return []

    def with_blank(run: dict, pick) -> str:
        try:
            return f"{_pct(pick(run['eval']))} ({_pct(pick(run['text_only_baseline']))})"
        except KeyError:  # a small evaluation subset without that question type
            return "-"

    def terms(run: dict) -> str:
        return ", ".join(f"{term} {v['first']:.2f} -> {v['last']:.2f}" for term, v in run["terms"].items())

    count = lambda e: e["gqa"]["by_type"]["count"]["accuracy"]  # noqa: E731
    lines = ["| run | count acc | POPE random / popular / adversarial acc | TR@1 | TR@5 | IR@1 | IR@5 | "
             "pre-training terms (first -> last logged) |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for name in names:
        run = runs[name]
        pope = " / ".join(with_blank(run, lambda e, s=split: e["pope"]["metrics"]["splits"][s]["accuracy"])
                          for split in ("random", "popular", "adversarial"))
        r = run["retrieval"]
        lines.append(f"| `{name}` | {with_blank(run, count)} | {pope} | {_pct(r['TR@1'])} | {_pct(r['TR@5'])} | "
                     f"{_pct(r['IR@1'])} | {_pct(r['IR@5'])} | {terms(run)} |")
    chance = runs[names[0]]["retrieval"]["pairs"]
    lines += ["", f"Retrieval: the pre-trained former alone (before any LLM), ITC similarity, {chance} held-out "
              f"pairs (chance TR@1 = {100 / chance:.1f}%). Count and POPE: after instruction tuning, image "
              "(blank image)."]
    if any("reconstruction" in runs[n]["terms"] for n in names):
        lines += ["", *(f"![{n} reconstruction loss]({n}/reconstruction_curve.png)" for n in names
                        if "reconstruction" in runs[n]["terms"])]
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
        for split, m in run["eval"]["pope"]["metrics"]["splits"].items():
            lines.append(f"| {split} | {_pct(m['accuracy'])} | {_pct(m['precision'])} | {_pct(m['recall'])} | "
                         f"{_pct(m['f1'])} | {_pct(m['yes_ratio'])} | {m['n']} |")
    if "mme" in run["eval"]:
        lines += ["", f"### `{name}`: MME categories (score = 100 x acc + 100 x acc+, max 200; image vs. blank)", "",
                  "| category | acc | acc+ | score | blank score | images |", "|---|---:|---:|---:|---:|---:|"]
        blank = run["text_only_baseline"]["mme"]["metrics"]["categories"]
        for category, m in run["eval"]["mme"]["metrics"]["categories"].items():
            lines.append(f"| {category} | {_pct(m['acc'])} | {_pct(m['acc_plus'])} | {m['score']:.1f} | "
                         f"{blank[category]['score']:.1f} | {m['images']} |")
    lines += ["", f"### `{name}`: the same answers under lmms-eval's scoring", "",
              "; ".join(f"{key} {value:.1f} ({blank:.1f})" for (key, value), blank in
                        zip(headline(run["eval"], "lmms_eval_headline").items(),
                            headline(run["text_only_baseline"], "lmms_eval_headline").values()))]
    if run.get("sea_labels"):
        lines += ["", *sea_label_lines(name, run["sea_labels"])]
    lines += ["", f"### `{name}`: training", ""]
    for stage in ("pretrain", "stage1", "stage2"):
        if stage not in run:
            continue
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


def use_lines(runs: dict[str, dict], out: str) -> list[str]:
    """How to talk to, serve and export the models this report describes."""
    first = f"{out}/{next(iter(runs))}/stage2"
    return ["## Using the trained models", "",
            f"- chat in the terminal: `vlalign chat --checkpoint {first} --image {out}/world/images/test/000000.png`",
            f"- web UI + OpenAI-compatible API: `vlalign serve --checkpoint {first}` (http://127.0.0.1:7860/, "
            "`/v1/chat/completions`)",
            f"- a folder transformers loads without vlalign: `vlalign export --checkpoint {first} --out "
            f"{out}/export` (remote-code: the packaged EfficientNet-Lite0 is not a Llava tower)",
            f"- every objective run's model is in `{out}/<run>/stage2`: "
            + ", ".join(f"`{name}`" for name in runs)]


def render_report(runs: dict[str, dict], info: dict) -> str:
    lines = ["# vlalign demo report", "",
             f"Preset `{info['preset']}`; {info['machine']}; total {info['runtime_s'] / 60:.1f} min, "
             f"peak memory (RSS) {info['peak_rss_mb']:.0f} MB.", "",
             f"Models: vision `{info['vision_tower']}` ({info['visual_tokens']} visual tokens), LLM `{info['llm']}`. "
             f"World: {info['world_counts']}.", "",
             "Each cell: the score with the real images, and in parentheses the same trained model with every "
             "image replaced by a blank (mean-colour) image, i.e. what the LLM gets right from the question "
             "alone. The difference is what vision adds. Objectives differ in stage 1 only; stage 2 is the same "
             "instruction tuning for all.",
             "Scoring: each benchmark's official script (`vlalign eval benchmarks`, README: Benchmark scoring); "
             "POPE/GQA/SQA in %, MME perception in MME's points (4 of its 10 perception categories here: "
             "existence, count, position, color; max 800).",
             "", "## Headline", "", *comparison_table(runs), "", *use_lines(runs, info.get("out", "runs/demo")), ""]
    if info.get("dual_encoder"):
        de = info["dual_encoder"]
        lines += ["## Demo dual encoder (EfficientNet-Lite0 + MiniLM-L6, trained heads)", "",
                  "Zero-shot retrieval on the held-out captions: " +
                  ", ".join(f"{k} {_pct(v)}%" for k, v in de["retrieval"].items()) +
                  f"; modality gap {de['modality_gap']:.3f}; trained in {de['seconds']:.0f} s"
                  f"{' (by an earlier run, reused)' if de.get('reused') else ''}.", ""]
    if alignment_rows(runs):
        lines += ["## Alignment diagnostics (`vlalign eval alignment`, held-out captions)", "",
                  "EOS gap: modality gap (Liang et al.) between image and caption EOS embeddings (Ak et al.'s "
                  "prompts); EOS Recall@K: image-to-text / text-to-image retrieval with them; D: mean cosine "
                  "distance of visual tokens to the nearest word embedding; TACS: top-10 visual-token cosine with "
                  "the own caption's tokens; probe: share of object-covered visual tokens whose nearest colour "
                  "(shape) word in the LLM input space is the object's colour (shape); chance levels are in each "
                  "objective's section.", "",
                  *alignment_rows(runs), ""]
    queries = query_rows(runs)
    if queries:
        lines += ["## Q-Former / X-Former", "",
                  "Pre-training (ITC + ITM + ITG, + MAE reconstruction for X-Former, no LLM), then LLM alignment "
                  "through one FC layer (the former trains too), then the same instruction tuning as every run.",
                  "", *queries, ""]
    for name, run in runs.items():
        lines += [f"## Objective `{name}`", "", *detail_tables(name, run), ""]
        for stage, result in (run.get("alignment") or {}).items():
            lines += [alignment_markdown(result, f"{name}/alignment_{stage}/",
                                         f"`{name}`: alignment after {stage.replace('stage', 'stage ')}"), ""]
    return "\n".join(lines)
