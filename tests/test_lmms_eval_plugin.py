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
from pathlib import Path

import datasets
import lmms_eval
import pytest
import torch
import yaml
from lmms_eval.api.instance import Instance
from lmms_eval.api.metrics import exact_match_hf_evaluate
from lmms_eval.tasks.mme import utils as lmms_mme
from lmms_eval.tasks.pope import utils as lmms_pope
from lmms_eval.tasks.scienceqa import utils as lmms_sqa

from vlalign.data.build import image_transform_for
from vlalign.data.images import load_image
from vlalign.data.templates import prompt_ids
from vlalign.eval.answering import answer_batch
from vlalign.eval.benchmarks.gqa import score_gqa
from vlalign.eval.benchmarks.mme import score_mme
from vlalign.eval.benchmarks.pope import score_pope
from vlalign.eval.benchmarks.science_qa import score_science_qa
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


def _entry_point_dist(folder: Path) -> Path:
    """A dist-info holding the `lmms_eval.models` entry points pyproject.toml declares: what `pip install -e .`
    writes, for an environment whose vlalign install predates them. lmms-eval reads it the way it reads any
    installed package's (importlib.metadata), so registration is tested, not bypassed."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    assert declared == {"vlalign": "vlalign.eval.lmms_eval_manifest:MANIFEST"}
    dist = folder / "vlalign_entry_points_under_test-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vlalign-entry-points-under-test\nVersion: 0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in declared.items())
    (dist / "entry_points.txt").write_text(f"[lmms_eval.models]\n{lines}")
    return folder


def _run_lmms_eval(checkpoint: Path, task_dir: Path, task: str, out: Path, tmp_path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(_entry_point_dist(tmp_path / "site")), str(REPO)])}
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


def _vlalign_answers(checkpoint: Path, rows: list[dict]) -> dict[str, str]:
    """vlalign's own answering of the same images and prompts (question + lmms-eval's post prompt)."""
    model, config = load_checkpoint_model(checkpoint, device="cpu")
    transform = image_transform_for(model)
    questions = [row["question"] + POPE_POST_PROMPT for row in rows]
    images = [transform(load_image(row["image"])) for row in rows]
    texts = answer_batch(model, config, questions, images, max_new_tokens=MAX_NEW_TOKENS)
    return {row["question_id"]: text for row, text in zip(rows, texts)}


def test_lmms_eval_evaluator_with_the_plugin_matches_vlalign_answers_and_pope_scores(tiny_config, toy_data, tmp_path):
    checkpoint = _checkpoint(tiny_config)
    rows = _write_pope(tmp_path / "pope", toy_data["image_root"])
    task = _write_task(tmp_path / "tasks", tmp_path / "pope")
    run = _run_lmms_eval(checkpoint, tmp_path / "tasks", task, tmp_path / "lmms_out", tmp_path)

    logged = {sample["doc"]["question_id"]: sample["filtered_resps"][0] for sample in run["samples"]}
    assert sorted(logged) == sorted(row["question_id"] for row in rows)
    ours = _vlalign_answers(checkpoint, rows)
    assert logged == ours

    _, metrics = score_pope(rows, ours, scoring="lmms-eval")
    expected = {name: metrics["all"][name if name != "f1_score" else "f1"] for name in POPE_METRICS}
    got = {name: run["results"][f"pope_{name},none"] for name in POPE_METRICS}
    assert got == pytest.approx(expected)


# (b) the scorers against lmms-eval's own task functions, on answers a real model gives.
ANSWERS = ["yes", "No", "Yes, there is a dog.", "there is no cat", " YES ", "no.", "y", "N", "Nope", "yes\n",
           "B", "b", " C ", "A. circle", "The answer is A.", "red", "Red.", " red", "two", "2"]


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


class _IgnoreFunctions(yaml.SafeLoader):
    pass


_IgnoreFunctions.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@pytest.mark.parametrize("parity", [_pope_parity, _mme_parity, _science_qa_parity, _gqa_parity],
                         ids=["pope", "mme", "scienceqa", "gqa"])
def test_vlalign_lmms_eval_scorers_equal_lmms_eval_task_functions(parity):
    theirs, ours = parity(ANSWERS)
    assert ours == pytest.approx(theirs)
    # one answer at a time too, so that a difference names the answer that causes it
    differing = [text for text in ANSWERS if (lambda pair: pair[1] != pytest.approx(pair[0]))(parity([text, text]))]
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
    stop = plain[3][2:4] if len(plain[3]) > 3 else plain[3][-1:]
    kwargs = [greedy, greedy, greedy, {**greedy, "until": [stop]}]
    answers = lmm.generate_until([_instance("generate_until", (q, dict(k), visual, i, "t", "test"), i)
                                  for i, (q, k) in enumerate(zip(questions, kwargs))])
    assert answers[:3] == plain[:3]  # an <image> tag in the context changes nothing: the image goes first
    assert answers[3] == cut_at_stop(plain[3], (stop,)) and stop not in answers[3]

    continuation = [lmm.model.tokenizer.decode(ids) for ids in ([5, 6, 7], [8])]
    requests = [_instance("loglikelihood", (questions[i], continuation[i % 2], visual, i, "t", "test"), i)
                for i in range(4)]
    batched = lmm.loglikelihood(requests)
    alone = [lmm.loglikelihood([request])[0] for request in requests]
    assert [score for score, _ in batched] == pytest.approx([score for score, _ in alone], abs=1e-4)
    assert all(score < 0 for score, _ in batched)


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
