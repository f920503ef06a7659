"""Progress of a training run: a console bar, TensorBoard and metrics.jsonl, averaged over each log window.

Shared by every training engine in the package (the stage loop, MAE pre-training, the dual encoder):
without an accelerator it logs one process's values and writes no TensorBoard events.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm.auto import tqdm

from vlalign.distributed import mean_over_ranks


def json_line(row: dict) -> str:
    """One metrics.jsonl row that every JSON reader takes: a non-finite value (an ITM accuracy with no pair to
    score, say) is written as null, never as the bare NaN / Infinity that Python's json would emit."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class StepLogger:
    """Console progress bar + TensorBoard + metrics.jsonl, with loss terms averaged over each log window.

    `accelerator`: the run's (values are averaged over ranks, only the main process writes, TensorBoard
    through its tracker); None for a single-process engine. `output_dir` None: no metrics.jsonl."""

    def __init__(self, accelerator, output_dir: Path | None, total_steps: int, start_step: int = 0,
                 desc: str = "train", progress: bool = True):
        self.accelerator = accelerator
        main = accelerator is None or accelerator.is_main_process
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (main and progress), desc=desc,
                        dynamic_ncols=True)
        self.metrics_file = (Path(output_dir) / "metrics.jsonl").open("a") if main and output_dir else None
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.window_start = time.perf_counter()

    def accumulate(self, total, losses: dict, metrics: dict, batch_size: int) -> None:
        values = {"loss": total.detach(), **losses}
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.count += 1
        self.samples += batch_size

    def step_done(self, step: int, lr: float, log: bool = True) -> dict | None:
        """Count a step; on a log step write and return the window's averages."""
        self.bar.update(1)
        if not log or not self.count:
            return None
        averages = {name: total / self.count for name, total in self.sums.items()}
        processes = 1
        if self.accelerator is not None:  # one collective per log window, not per step
            averages = dict(zip(averages, mean_over_ranks(list(averages.values()), self.accelerator.device)))
            processes = self.accelerator.num_processes
        elapsed = time.perf_counter() - self.window_start
        averages["samples_per_s"] = self.samples * processes / max(elapsed, 1e-9)
        averages["lr"] = lr
        if self.accelerator is not None:
            self.accelerator.log(averages, step=step)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in averages.items() if k != "lr"})
        if self.metrics_file is not None:
            self.metrics_file.write(json_line({"step": step, **averages}))
            self.metrics_file.flush()
        self.sums, self.count, self.samples = {}, 0, 0
        self.window_start = time.perf_counter()
        return averages

    def log_values(self, step: int, values: dict[str, float]) -> None:
        """Values computed outside the step (evaluation): console, TensorBoard and their own metrics.jsonl row.
        Every rank computes the same values, so nothing is averaged."""
        if self.accelerator is not None:
            self.accelerator.log(values, step=step)
        if self.accelerator is None or self.accelerator.is_main_process:
            self.bar.write(f"[step {step}] " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if self.metrics_file is not None:
            self.metrics_file.write(json_line({"step": step, **values}))
            self.metrics_file.flush()

    def close(self) -> None:
        self.bar.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
