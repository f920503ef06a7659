"""DDP with two CPU processes (gloo) via torchrun: trains, checkpoints per-rank RNG, resumes exactly."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from process_group_helpers import free_port
from vlalign.config import dump_config
from vlalign.train import checkpoint as ckpt

SETTINGS = ("train.max_steps=5", "train.save_every=2", "train.batch_size=2", "train.tune.llm=lora",
            "train.tune.lora.r=4", "train.tune.lora.dropout=0.2")


def _torchrun(config, env_extra=None, resume=False) -> subprocess.CompletedProcess:
    path = Path(config.train.output_dir).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_config(config, path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "vlalign.cli", "train", str(path)] + (["--resume"] if resume else [])
    return subprocess.run(command, env={**os.environ, **(env_extra or {})}, capture_output=True, text=True,
                          timeout=300)


def test_ddp_two_processes_train_and_resume_exactly(tiny_config, tmp_path):
    straight = tiny_config(2, *SETTINGS, f"train.output_dir={tmp_path / 'straight'}")
    result = _torchrun(straight)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = ckpt.latest_checkpoint(tmp_path / "straight")
    assert (checkpoint / "rng_0.pt").is_file() and (checkpoint / "rng_1.pt").is_file()
    # Each rank has its own dropout stream; they must differ or the ranks would be redundant.
    rng = [torch.load(checkpoint / f"rng_{r}.pt", weights_only=False)["rng"]["torch"] for r in (0, 1)]
    assert not torch.equal(*rng)

    interrupted = tiny_config(2, *SETTINGS, f"train.output_dir={tmp_path / 'interrupted'}")
    killed = _torchrun(interrupted, {"VLALIGN_FAULT": "after_step_2"})
    assert killed.returncode != 0 and not (tmp_path / "interrupted" / "final").exists()
    resumed = _torchrun(interrupted, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = load_file(str(tmp_path / "straight" / "final" / ckpt.WEIGHTS_FILE))
    got = load_file(str(tmp_path / "interrupted" / "final" / ckpt.WEIGHTS_FILE))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


# One save_checkpoint on two gloo processes, where rank 1 is slow to write its RNG file (as an overloaded
# machine makes it now and then): rank 0 must not mark the staging folder complete and rename it into place
# before rank 1's file is in it.
SLOW_RANK_SAVE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from types import SimpleNamespace
    import torch
    import torch.distributed as dist
    from torch import nn
    from vlalign.config import load_config
    from vlalign.train import checkpoint as ckpt

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    class Accelerator:
        distributed_type = SimpleNamespace(value="MULTI_CPU")
        process_index = rank
        is_main_process = rank == 0

        def wait_for_everyone(self):
            dist.barrier()

    class Tokenizer:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)

    if rank == 1:
        rng_state = ckpt._rng_state
        ckpt._rng_state = lambda: (time.sleep(1.0), rng_state())[1]
    model = nn.Linear(2, 2)
    model.tokenizer = Tokenizer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ckpt.save_checkpoint(Path(sys.argv[1]) / "checkpoint-000001", Accelerator(), model=model,
                         objectives=nn.ModuleDict(), config=load_config(None, []), state={"step": 1},
                         optimizer=optimizer, scheduler=scheduler, rank_state={"truncated": rank})
    dist.destroy_process_group()
""")


def test_checkpoint_waits_for_every_rank_before_it_is_published(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-c", SLOW_RANK_SAVE, str(tmp_path)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    for rank, (_, stderr) in zip(ranks, outputs):
        assert rank.returncode == 0, stderr[-3000:]
    checkpoint = ckpt.latest_checkpoint(tmp_path)
    assert checkpoint == tmp_path / "checkpoint-000001" and not (tmp_path / ".checkpoint-000001.tmp").exists()
    for r in (0, 1):
        assert torch.load(checkpoint / f"rng_{r}.pt", weights_only=False)["truncated"] == r


# A tensor handed to a collective and dropped by Python is freed by gloo's worker thread, which needs the GIL for
# it; at interpreter exit that aborts the process (SIGABRT). quiesce() must wait until the backend let go of every
# tracked tensor. Rank 1 joins the collective a second late, so rank 0's worker holds the tensor that long.
QUIESCE = textwrap.dedent("""
    import time, weakref
    import torch
    import torch.distributed as dist
    from vlalign import distributed

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 1:
        time.sleep(1.0)
    tensor = torch.ones(3)
    work = dist.all_reduce(tensor, async_op=True)
    if rank == 0:
        distributed._track(tensor)
        probe = weakref.ref(tensor)
        del tensor, work
        assert probe() is not None, "the backend should still hold the tensor"
        start = time.monotonic()
        distributed.quiesce()
        assert probe() is None and time.monotonic() - start > 0.5, time.monotonic() - start
        # The helpers track what they hand over; after quiesce nothing of theirs is left with the backend.
        assert distributed.gather_objects([rank]) == [0, 1] and distributed.mean_over_ranks([rank], "cpu") == [0.5]
        distributed.gather_rows(torch.ones(rank + 1, 2))
        distributed.quiesce()
        assert not distributed._handed_over
    else:
        work.wait()
        assert distributed.gather_objects([rank]) == [0, 1] and distributed.mean_over_ranks([rank], "cpu") == [0.5]
        distributed.gather_rows(torch.ones(rank + 1, 2))
    dist.destroy_process_group()
""")


def test_quiesce_waits_until_the_backend_let_go_of_tracked_tensors():
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-c", QUIESCE], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    for rank, (_, stderr) in zip(ranks, outputs):
        assert rank.returncode == 0, stderr[-3000:]


def test_a_rank_whose_whole_micro_batch_was_skipped_keeps_the_ranks_in_step(tiny_config, toy_data, tmp_path):
    """Batch size 1 on two ranks, 3 of 8 images unreadable (skip policy): an odd number, so at some step exactly
    one rank's micro-batch is empty. Both ranks must leave that step out together (no hang, no mismatched
    collectives), and the records left out on the other rank are counted."""
    import json
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    records = []
    for index in range(8):
        name = f"{index}.png"
        if index in (1, 4, 6):
            (images / name).write_bytes(b"not an image" * 10)
        else:
            shutil.copy(toy_data["image_root"] / "images" / f"{index:05d}.png", images / name)
        records.append({"id": f"r{index}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": "There is a red circle on the left."}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    config = tiny_config(1, f"data.train_file={tmp_path / 'data.json'}", f"data.image_root={images}",
                         "data.on_error=skip", "train.batch_size=1", "train.epochs=1",
                         f"train.output_dir={tmp_path / 'run'}")
    result = _torchrun(config)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert sum(report["skipped"].values()) == 3, report  # each unreadable record once, whatever the epochs
    assert report["left_out_for_sync"] >= 1  # a step where only one rank had a record: that record waited out
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and ckpt.is_complete(tmp_path / "run" / "final")  # the loop refills epochs
