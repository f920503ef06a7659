"""lmms-eval's own evaluator running vlalign's `vlalign` model plugin gives what vlalign's own evaluation gives:
the same answers for the same image and prompt, and the same POPE metrics as vlalign's lmms-eval scorer; and
vlalign's lmms-eval scorers agree with lmms-eval's own task functions on realistic answers.

lmms-eval is installed by `bash scripts/install.sh --test` (requirements/lmms-eval.txt), so nothing here is
skipped: without it this module fails to import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import datasets
import lmms_eval
import pytest
import torch
import yaml
from lmms_eval.api.instance import Instance
from lmms_eval.api.metrics import exact_match_hf_evaluate
from lmms_eval.tasks.mmbench import en_utils as lmms_mmbench
from lmms_eval.tasks.mme import utils as lmms_mme
from lmms_eval.tasks.pope import utils as lmms_pope
from lmms_eval.tasks.scienceqa import utils as lmms_sqa
from lmms_eval.tasks.seedbench import utils as lmms_seed
from lmms_eval.tasks.textvqa import utils as lmms_textvqa
from lmms_eval.tasks.vqav2 import utils as lmms_vqav2

from vlalign import cli
from vlalign.data.images import load_image
from vlalign.data.templates import prompt_ids
from vlalign.eval.answering import answer_batch
from vlalign.eval.benchmarks.gqa import score_gqa
from vlalign.eval.benchmarks.mmbench import score_mmbench
from vlalign.eval.benchmarks.mme import score_mme
from vlalign.eval.benchmarks.pope import score_pope
from vlalign.eval.benchmarks.science_qa import score_science_qa
from vlalign.eval.benchmarks.seed_bench import score_seed_bench
from vlalign.eval.benchmarks.vqa import score_textvqa, score_vqav2
from vlalign.eval.lmms_eval_model import GenerationOptions, VlalignLMM, continuation_logprobs, cut_at_stop
from vlalign.train.load import load_checkpoint_model
from vlalign.train.loop import train

REPO = Path(__file__).resolve().parents[1]
TASKS = Path(lmms_eval.__file__).parent / "tasks"
POPE_POST_PROMPT = "\nAnswer the question using a single word or phrase."  # lmms-eval's pope.yaml, default model
POPE_METRICS = ("accuracy", "precision", "recall", "f1_score", "yes_ratio")
MAX_NEW_TOKENS = 8  # the task's generation length here (pope.yaml says 128; a random model rarely stops early)


def _checkpoint(tiny_config) -> Path:
    """A stage-2 (chat format) checkpoint of the tiny random models, one training step."""
    return train(tiny_config(2, "train.max_steps=1"))


def _write_pope(folder: Path, image_root: Path, n: int = 12) -> list[dict]:
    """A small POPE in lmms-lab/POPE's columns, saved with `datasets` (images embedded as lmms-lab ships them).
    Returns the rows (image as the file path) for vlalign's side."""
    images = sorted((image_root / "images").glob("*.png"))
    objects = ("circle", "square", "triangle", "star")
    rows = [{"question_id": str(100 + i), "question": f"Is there a {objects[i % 4]} in the image?",
             "answer": "yes" if i % 2 == 0 else "no", "image_source": images[i % len(images)].stem,
             "image": str(images[i % len(images)]), "category": ("adversarial", "popular", "random")[i % 3]}
            for i in range(n)]
    features = datasets.Features({name: datasets.Value("string") for name in rows[0]} | {"image": datasets.Image()})
    table = {name: [row[name] for row in rows] for name in rows[0]}
    table["image"] = [{"bytes": Path(path).read_bytes(), "path": None} for path in table["image"]]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(table, features=features)}).save_to_disk(str(folder))
    return rows


def _write_task(folder: Path, data: Path) -> str:
    """A local task that is lmms-eval's own pope.yaml (its prompt, process_results and aggregations), reading
    the local set instead of the hub."""
    folder.mkdir(parents=True)
    task = {"include": str(TASKS / "pope" / "pope.yaml"), "task": "vlalign_pope_local", "dataset_path": str(data),
            "dataset_kwargs": {"load_from_disk": True},
            "generation_kwargs": {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                  "do_sample": False}}
    (folder / "vlalign_pope_local.yaml").write_text(yaml.safe_dump(task))
    return task["task"]


def _registered_entry_point() -> None:
    """`pip install -e .` registers the plugin as pyproject.toml declares it; lmms-eval finds it there."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    installed = {point.name: point.value for point in entry_points(group="lmms_eval.models")}
    assert declared == {"vlalign": "vlalign.eval.lmms_eval_manifest:MANIFEST"} and installed == declared, (
        "reinstall vlalign (pip install -e .) so its lmms_eval.models entry point is registered")


def _run_lmms_eval(checkpoint: Path, task_dir: Path, task: str, out: Path, tmp_path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    _registered_entry_point()
    command = [sys.executable, "-m", "lmms_eval", "--model", "vlalign", "--model_args",
               f"checkpoint={checkpoint},device=cpu", "--tasks", task, "--include_path", str(task_dir),
               "--batch_size", "4", "--log_samples", "--output_path", str(out), "--verbosity", "WARNING"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    # lmms-eval logs an evaluation error and still exits 0: the files it writes at the end are the proof
    results_files, sample_files = list(out.rglob("*_results.json")), list(out.rglob(f"*_samples_{task}.jsonl"))
    assert done.returncode == 0 and len(results_files) == len(sample_files) == 1, (
        f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    results = json.loads(results_files[0].read_text())
    samples = [json.loads(line) for line in sample_files[0].read_text().splitlines()]
    return {"results": results["results"][task], "samples": samples}


def _vlalign_benchmark(checkpoint: Path, data: Path, out: Path) -> tuple[dict[str, dict], dict]:
    """`vlalign eval benchmarks` on the same saved set: its answers by POPE question id (the command names them
    `<category>/<id>`) and its metrics.json."""
    argv = ["eval", "benchmarks", "--checkpoint", str(checkpoint), "--benchmark", "pope", "--data", str(data),
            "--scoring", "lmms-eval", "--out", str(out), "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "4",
            "--device", "cpu"]
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    return {line["question_id"].rsplit("/", 1)[-1]: line for line in lines}, json.loads((out / "metrics.json").read_text())


def test_lmms_eval_evaluator_with_the_plugin_matches_vlalign_eval_benchmarks(tiny_config, toy_data, tmp_path):
    checkpoint = _checkpoint(tiny_config)
    rows = _write_pope(tmp_path / "pope", toy_data["image_root"])
    task = _write_task(tmp_path / "tasks", tmp_path / "pope")
    run = _run_lmms_eval(checkpoint, tmp_path / "tasks", task, tmp_path / "lmms_out", tmp_path)
    answers, report = _vlalign_benchmark(checkpoint, tmp_path / "pope", tmp_path / "vlalign_out")

    # one logged sample per document, in the set's order: its prompt and its answer (the task has no filter)
    samples = sorted(run["samples"], key=lambda sample: sample["doc_id"])
    assert [sample["doc_id"] for sample in samples] == list(range(len(rows)))
    assert sorted(answers) == sorted(row["question_id"] for row in rows)
    ours = [answers[row["question_id"]] for row in rows]
    assert [sample["input"] for sample in samples] == [row["question"] + POPE_POST_PROMPT for row in rows]
    assert [line["prompt"] for line in ours] == [sample["input"] for sample in samples]
    assert [sample["filtered_resps"] for sample in samples] == [line["text"] for line in ours]
    assert len({line["text"] for line in ours}) > 1  # the answers depend on image and question: a mix-up shows

    # lmms-eval's POPE metrics on its answers = vlalign's lmms-eval scoring (score_pope) on vlalign's answers
    assert (report["benchmark"], report["scoring"]) == ("pope", "lmms-eval")
    expected = {name: report["metrics"]["all"][name if name != "f1_score" else "f1"] for name in POPE_METRICS}
    got = {name: run["results"][f"pope_{name},none"] for name in POPE_METRICS}
    assert got == pytest.approx(expected)
    _, scored = score_pope(rows, {row["question_id"]: line["text"] for row, line in zip(rows, ours)}, "lmms-eval")
    assert scored["all"] == report["metrics"]["all"]


# (b) the scorers against lmms-eval's own task functions, on answers a real model gives.
ANSWERS = ["yes", "No", "Yes, there is a dog.", "there is no cat", " YES ", "no.", "y", "N", "Nope", "yes\n",
           "B", "b", " C ", "A. circle", "The answer is A.", "(B) blue", "I think it is B", "red", "Red.", " red",
           "two", "2", "Two.", "t-shirt", "T shirt", "Man's hat", "1,000", "a red car", "It is blue."]


def _lmms_generate_until_results(text: str) -> list[str]:
    """What a task's process_results receives for a generate_until answer (ConfigurableTask strips it)."""
    return [text.strip()]


def _pope_parity(answers: list[str]):
    docs = [{"question_id": str(i), "answer": ("yes", "no")[i % 2], "category": ("random", "popular")[i % 2]}
            for i in range(len(answers))]
    per_doc = [lmms_pope.pope_process_results(doc, _lmms_generate_until_results(text)) for doc, text in zip(docs, answers)]
    theirs = {name: getattr(lmms_pope, f"pope_aggregate_{name}")([result[f"pope_{name}"] for result in per_doc])
              for name in POPE_METRICS}
    _, metrics = score_pope(docs, {doc["question_id"]: text for doc, text in zip(docs, answers)}, scoring="lmms-eval")
    return theirs, {name: metrics["all"][name if name != "f1_score" else "f1"] for name in POPE_METRICS}


def _mme_parity(answers: list[str]):
    """MME asks two questions per image; lmms-eval's question_id is the image (the pair), vlalign's is the
    question's own id with the pair in `image`."""
    categories = ("existence", "count", "OCR", "code_reasoning", "text_translation")
    pairs = [answers[i:i + 2] for i in range(0, len(answers) - 1, 2)]
    docs, records, predictions = [], [], {}
    for index, pair in enumerate(pairs):
        image, category = f"{categories[index % len(categories)]}/{index:04d}.png", categories[index % len(categories)]
        for turn, (text, gold) in enumerate(zip(pair, ("Yes", "No"))):
            docs.append(({"question_id": image, "answer": gold, "category": category}, text))
            qid = f"{image}#{turn}"
            records.append({"question_id": qid, "image": image, "answer": gold, "category": category})
            predictions[qid] = text
    per_doc = [lmms_mme.mme_process_results(doc, _lmms_generate_until_results(text)) for doc, text in docs]
    theirs = {side: lmms_mme.mme_aggregate_results([r[f"mme_{side}_score"] for r in per_doc if f"mme_{side}_score" in r])
              for side in ("perception", "cognition")}
    _, metrics = score_mme(records, predictions, scoring="lmms-eval")
    return theirs, {side: metrics[side] for side in ("perception", "cognition")}


def _science_qa_parity(answers: list[str]):
    docs = [{"question_id": str(i), "choices": ["circle", "square", "star"], "answer": i % 3, "image": "x.png",
             "hint": "", "question": "Which shape is it?"} for i in range(len(answers))]
    scores = [lmms_sqa.sqa_process_results(doc, _lmms_generate_until_results(text))["exact_match"]
              for doc, text in zip(docs, answers)]
    _, metrics = score_science_qa(docs, {doc["question_id"]: text for doc, text in zip(docs, answers)},
                                  scoring="lmms-eval")
    return {"accuracy": sum(scores) / len(scores)}, {"accuracy": metrics["accuracy"]}


def _gqa_parity(answers: list[str]):
    """gqa.yaml scores with the registered exact_match metric and the keyword arguments it lists."""
    config = yaml.load((TASKS / "gqa" / "gqa.yaml").read_text(), Loader=_IgnoreFunctions)
    (metric,) = config["metric_list"]
    kwargs = {key: value for key, value in metric.items() if key not in ("metric", "aggregation", "higher_is_better")}
    assert metric["metric"] == "exact_match" and metric["aggregation"] == "mean"
    golds = ["red", "Red", "red", "two", "2"]
    docs = [{"question_id": str(i), "answer": golds[i % len(golds)]} for i in range(len(answers))]
    scores = [exact_match_hf_evaluate(predictions=_lmms_generate_until_results(text), references=[doc["answer"]],
                                      **kwargs)["exact_match"] for doc, text in zip(docs, answers)]
    _, metrics = score_gqa(docs, {doc["question_id"]: text for doc, text in zip(docs, answers)}, scoring="lmms-eval")
    return {"accuracy": sum(scores) / len(scores)}, {"accuracy": metrics["accuracy"]}


VQA_HUMANS = (["red"] * 4 + ["dark red"] * 3 + ["maroon"] * 3, ["2"] * 6 + ["two"] * 2 + ["3"] * 2, ["yes"] * 10,
              ["t-shirt"] * 10, ["man's hat"] * 5 + ["hat"] * 5, ["1000"] * 3 + ["1,000"] * 7)


def _vqav2_parity(answers: list[str]):
    """vqav2_val's process_results (its docs keep VQAv2's answer dicts, answer_id 1-10), mean aggregation."""
    humans = [VQA_HUMANS[i % len(VQA_HUMANS)] for i in range(len(answers))]
    scores = [lmms_vqav2.vqav2_process_results_val(
        {"question_id": i, "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                                       for n, a in enumerate(human)]}, _lmms_generate_until_results(text))["exact_match"]
        for i, (human, text) in enumerate(zip(humans, answers))]
    records = [{"question_id": str(i), "answers": human} for i, human in enumerate(humans)]
    _, metrics = score_vqav2(records, {str(i): text for i, text in enumerate(answers)}, scoring="lmms-eval")
    return {"accuracy": sum(scores) / len(scores)}, {"accuracy": metrics["accuracy"]}


def _textvqa_parity(answers: list[str]):
    humans = [VQA_HUMANS[i % len(VQA_HUMANS)] for i in range(len(answers))]
    scores = [lmms_textvqa.textvqa_process_results({"question_id": i, "answers": list(human)},
                                                   _lmms_generate_until_results(text))["exact_match"]
              for i, (human, text) in enumerate(zip(humans, answers))]
    records = [{"question_id": str(i), "answers": human} for i, human in enumerate(humans)]
    _, metrics = score_textvqa(records, {str(i): text for i, text in enumerate(answers)}, scoring="lmms-eval")
    return {"accuracy": sum(scores) / len(scores)}, {"accuracy": metrics["accuracy"]}


def _seed_bench_parity(answers: list[str]):
    docs = [{"question_id": str(i), "answer": "ABCD"[i % 4], "data_type": "image"} for i in range(len(answers))]
    per_doc = [lmms_seed.seed_process_result(doc, _lmms_generate_until_results(text)) for doc, text in zip(docs, answers)]
    theirs = {key: lmms_seed.seed_aggregation_result([r[key] for r in per_doc]) for key in ("seed_image", "seed_all")}
    records = [{**doc, "question_type_id": 1} for doc in docs]
    _, metrics = score_seed_bench(records, {doc["question_id"]: t for doc, t in zip(docs, answers)}, scoring="lmms-eval")
    return theirs, {"seed_image": metrics["image_accuracy"], "seed_all": metrics["accuracy"]}


def _mmbench_parity(answers: list[str]):
    """CircularEval over two-option questions (two passes each, the options swapped in the second, index +
    1,000,000 as MMBench numbers them), through lmms-eval's judge-free `static` evaluation."""
    option_pairs = (("red", "blue"), ("a circle", "two"), ("yes", "no"))
    answers = answers + answers[:1] if len(answers) % 2 else answers
    docs, records, predictions = [], [], {}
    for question in range(len(answers) // 2):
        first, second = option_pairs[question % len(option_pairs)]
        category, l2 = ("colour", "count")[question % 2], ("perception", "reasoning")[question % 3 == 0]
        for rotation, options in enumerate(({"A": first, "B": second}, {"A": second, "B": first})):
            index, answer = question + rotation * 1_000_000, "AB"[rotation]  # the right option is `first`
            doc = {"index": index, "question": "Which is it?", "answer": answer, "hint": None, "source": "test",
                   "split": "dev", "category": category, "L2-category": l2, **options, "C": None, "D": None}
            docs.append((doc, answers[2 * question + rotation]))
            records.append({"question_id": str(index), "index": question, "rotation": rotation, "options": options,
                            "answer": answer, "category": category, "l2_category": l2})
            predictions[str(index)] = answers[2 * question + rotation]
    results = [lmms_mmbench.mmbench_process_results(doc, _lmms_generate_until_results(text))["gpt_eval_score"]
               for doc, text in docs]
    overall, categories, l2_categories = lmms_mmbench.mmbench_evaluator.eval_result(results, eval_method="static")
    _, metrics = score_mmbench(records, predictions, scoring="lmms-eval")
    theirs = {"accuracy": overall, **{f"category {name}": acc for name, acc in categories.items()},
              **{f"l2 {name}": acc for name, acc in l2_categories.items()}}
    ours = {"accuracy": metrics["circular_accuracy"],
            **{f"category {name}": m["accuracy"] for name, m in metrics["categories"].items()},
            **{f"l2 {name}": m["accuracy"] for name, m in metrics["l2_categories"].items()}}
    return theirs, ours


class _IgnoreFunctions(yaml.SafeLoader):
    pass


_IgnoreFunctions.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@pytest.mark.parametrize("parity", [_pope_parity, _mme_parity, _science_qa_parity,
                                    _gqa_parity, _vqav2_parity, _textvqa_parity,
                                    _seed_bench_parity, _mmbench_parity],
                         ids=["pope", "mme", "scienceqa", "gqa", "vqav2", "textvqa", "seedbench", "mmbench"])
def test_vlalign_lmms_eval_scorers_equal_lmms_eval_task_functions(parity):
    theirs, ours = parity(ANSWERS)
    assert ours == pytest.approx(theirs)
    # each answer alone too, given to 12 questions (every gold answer of each set above meets it), so that a
    # difference names the answer that causes it
    differing = [text for text in ANSWERS if (lambda pair: pair[1] != pytest.approx(pair[0]))(parity([text] * 12))]
    assert not differing, f"vlalign's lmms-eval scoring differs from lmms-eval's on {differing}"


# The plugin's own contract, in process (lmms-eval's Instance objects, a task_dict as the evaluator sets it).
def _instance(kind: str, arguments: tuple, index: int) -> Instance:
    return Instance(request_type=kind, arguments=arguments, idx=0, metadata={"task": "t", "doc_id": index,
                                                                               "repeats": 1, "split": "test"})


def test_plugin_batches_by_gen_kwargs_stops_at_until_and_scores_loglikelihoods(tiny_config, toy_data):
    lmm = VlalignLMM(checkpoint=str(_checkpoint(tiny_config)), device="cpu", batch_size="3")
    image = load_image(toy_data["image_root"] / "images" / "00001.png")
    lmm.task_dict = {"t": {"test": [{"image": image}, {"image": None}, {"image": image}, {"image": image}]}}
    visual = lambda doc: [doc["image"]] if doc["image"] is not None else []  # noqa: E731
    questions = ["What color is the circle?", "Name a fruit.", "<image>\nHow many shapes are there?", "Describe it."]
    greedy = {"max_new_tokens": 6, "temperature": 0, "do_sample": False}
    plain = answer_batch(lmm.model, lmm.config, [q.replace("<image>\n", "") for q in questions],
                         [lmm._transform(image), None, lmm._transform(image), lmm._transform(image)], max_new_tokens=6)
    longest = max(range(4), key=lambda i: len(plain[i]))
    assert len(plain[longest]) >= 2, plain
    stop = plain[longest][1:3]  # a stop string inside the longest answer: the answer must end before it
    kwargs = [{**greedy, "until": [stop]} if i == longest else greedy for i in range(4)]
    answers = lmm.generate_until([_instance("generate_until", (q, dict(k), visual, i, "t", "test"), i)
                                  for i, (q, k) in enumerate(zip(questions, kwargs))])
    # the stop string changes only its own request (grouped apart by its gen_kwargs); an <image> tag in a
    # context changes nothing, the image goes first
    assert [a for i, a in enumerate(answers) if i != longest] == [a for i, a in enumerate(plain) if i != longest]
    assert answers[longest] == plain[longest].split(stop)[0].strip() and stop not in answers[longest]

    continuation = [lmm.model.tokenizer.decode(ids) for ids in ([5, 6, 7], [8])]
    requests = [_instance("loglikelihood", (questions[i], continuation[i % 2], visual, i, "t", "test"), i)
                for i in range(4)]
    batched = lmm.loglikelihood(requests)
    alone = [lmm.loglikelihood([request])[0] for request in requests]
    assert [score for score, _ in batched] == pytest.approx([score for score, _ in alone], abs=1e-4)
    assert all(score < 0 for score, _ in batched)


def test_plugin_multi_round_follows_doc_to_text_and_samples_when_asked(tiny_config, toy_data):
    lmm = VlalignLMM(checkpoint=str(_checkpoint(tiny_config)), device="cpu")
    image = load_image(toy_data["image_root"] / "images" / "00002.png")
    lmm.task_dict = {"t": {"test": [{"image": image}]}}
    rounds = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        rounds.append((list(previous_output), round_idx, previous_round_info))
        if round_idx == 1:  # a second question about the same image, then stop
            return [doc["image"]], "<image>\nName a fruit.", False, previous_output, {"asked": 1}
        return None, None, True, previous_output, None

    greedy = {"max_new_tokens": 5, "do_sample": False}
    (outputs,) = lmm.generate_until_multi_round([_instance(
        "generate_until_multi_round", ("What color is it?", greedy, lambda doc: [doc["image"]], doc_to_text, 0, "t",
                                       "test"), 0)])
    pixels = lmm._transform(image)
    expected = [answer_batch(lmm.model, lmm.config, [question], [pixels], max_new_tokens=5)[0]
                for question in ("What color is it?", "Name a fruit.")]
    assert outputs == expected
    assert rounds == [([expected[0]], 1, None), (expected, 2, {"asked": 1})]

    torch.manual_seed(0)
    sampled = lmm.generate_until([_instance("generate_until", ("Name a fruit.", {"max_new_tokens": 4, "temperature": 0.9,
                                                                                  "top_p": 0.9}, None, 0, "t", "test"), 0)])
    beams = lmm.generate_until([_instance("generate_until", ("Name a fruit.", {"max_new_tokens": 4, "num_beams": 2},
                                                             None, 0, "t", "test"), 0)])
    assert all(isinstance(text, str) for text in sampled + beams)  # the sampling and beam-search paths run


def test_loglikelihood_says_greedy_exactly_for_the_greedy_continuation(tiny_config):
    model, config = load_checkpoint_model(_checkpoint(tiny_config), device="cpu")
    context = prompt_ids(model.tokenizer, config.data.format, "Name a fruit.", None, model.num_visual_tokens)
    ids = torch.tensor([context])
    greedy = model.generate(ids, torch.ones_like(ids), None, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]
    greedy = greedy.tolist()
    other = greedy[:-1] + [(greedy[-1] + 1) % len(model.tokenizer)]
    (greedy_score, is_greedy), (other_score, other_greedy) = continuation_logprobs(
        model, [context, context], [greedy, other], [None, None])
    assert is_greedy and not other_greedy and other_score < greedy_score <= 0


def test_generation_options_follow_lmms_eval_conventions():
    assert GenerationOptions.from_gen_kwargs({}) == GenerationOptions()
    pope = GenerationOptions.from_gen_kwargs({"max_new_tokens": 128, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                              "do_sample": False, "until": "\n\n"})
    assert (pope.sample, pope.max_new_tokens, pope.until) == (False, 128, ("\n\n",))
    assert GenerationOptions.from_gen_kwargs({"temperature": 0.7}).sample  # llava: do_sample = temperature > 0
    assert not GenerationOptions.from_gen_kwargs({"temperature": 0.7, "do_sample": False}).sample
    assert not GenerationOptions.from_gen_kwargs({"temperature": 0, "do_sample": True}).sample
    assert GenerationOptions.from_gen_kwargs({"do_sample": True}).temperature == 1.0
    assert cut_at_stop("Yes. It is.\n\nUser:", ("User:", "\n\n")) == "Yes. It is."
