"""`vlalign demo`: an offline two-stage run with the packaged models on generated data.

Generates the coloured-shapes set, trains stage 1 (connector, generative) and stage 2 (LoRA instruction
tuning), then answers questions about held-out images. The full demo (shapes world, all objectives,
benchmark-style evaluation and report) extends this.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.config import load_config
from vlalign.data.toy import write_toy_dataset

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _stage_config(name: str, out: Path, data: dict, extra: list[str]):
    overrides = [f"data.train_file={data['train_file']}", f"data.image_root={data['image_root']}",
                 f"train.output_dir={out}", *extra]
    return load_config(CONFIGS / name, overrides)


def run_demo(out: Path, n_images: int = 160, seed: int = 0) -> dict:
    from vlalign.generate import answer, load_checkpoint_model
    from vlalign.train.loop import train

    print(f"[demo] about 3-5 minutes on a 2-core CPU for {n_images} images (first run adds ~30 s to convert "
          f"the packaged SmolLM2 GGUF once)")
    data_dir = out / "data"
    if not (data_dir / "stage2.json").is_file():
        write_toy_dataset(data_dir, n_images + 8, seed)
    train_ids = json.loads((data_dir / "stage1.json").read_text())[:n_images]
    held_out = json.loads((data_dir / "stage2.json").read_text())[n_images:n_images + 4]
    (data_dir / "stage1_train.json").write_text(json.dumps(train_ids))
    stage2_train = [r for r in json.loads((data_dir / "stage2.json").read_text()) if r not in held_out]
    (data_dir / "stage2_train.json").write_text(json.dumps(stage2_train))

    stage1 = train(_stage_config("quickstart-stage1.yaml", out / "stage1",
                                 {"train_file": data_dir / "stage1_train.json", "image_root": data_dir}, []))
    stage2 = train(_stage_config("quickstart-stage2.yaml", out / "stage2",
                                 {"train_file": data_dir / "stage2_train.json", "image_root": data_dir},
                                 [f"train.init_from={stage1}"]))
    model, config = load_checkpoint_model(stage2)
    samples = []
    for record in held_out:
        if "image" not in record:
            continue
        question = record["conversations"][0]["value"].replace("<image>\n", "")
        reply = answer(model, config, data_dir / record["image"], question, max_new_tokens=24)
        samples.append({"image": record["image"], "question": question,
                        "expected": record["conversations"][1]["value"], "answer": reply})
        print(f"[demo] {record['image']}: Q: {question} | expected: {samples[-1]['expected']} | model: {reply}")
    (out / "samples.json").write_text(json.dumps(samples, indent=2))
    exact = sum(s["answer"].strip().lower() == s["expected"].strip().lower() for s in samples)
    print(f"[demo] exact answers on held-out images: {exact}/{len(samples)}")
    print(f"[demo] done: checkpoints in {stage1} and {stage2}; samples in {out / 'samples.json'}")
    return {"stage1": str(stage1), "stage2": str(stage2), "samples": samples}
