#!/usr/bin/env python3
"""Same-run baseline for BENCHMARKS.md: transformers' NemotronH (eager, f32, CPU) on the benchmark config.

Builds the model from models/configs/bench-150m.json with random weights (speed does not depend on the
values), runs the full forward pass (every block and norm_f, no lm_head, output_hidden_states=False) at
the same shapes as `marc bench`, and prints median latency and tokens/s. Run by hand with the pinned
venv of models/tests/fixtures/requirements.txt:

    /path/to/venv/bin/python scripts/bench_transformers.py --threads 2
"""
import argparse
import json
import pathlib
import statistics
import time

import torch
from transformers import NemotronHConfig
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHModel

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--shapes", default="1x32,16x128")
    parser.add_argument("--config", default=str(ROOT / "models/configs/bench-150m.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    raw = json.loads(pathlib.Path(args.config).read_text().replace("Infinity", "1e309"))
    config = NemotronHConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    config._attn_implementation = "eager"
    model = NemotronHModel(config).float().eval()
    print(f"transformers NemotronHModel, f32 eager, {args.threads} threads, torch {torch.__version__}")
    print(f"{'batch':>12} {'median ms':>11} {'tokens/s':>12}")
    for shape in args.shapes.split(","):
        sequences, length = (int(v) for v in shape.split("x"))
        ids = torch.randint(0, config.vocab_size, (sequences, length))
        times = []
        with torch.inference_mode():
            for i in range(2 + args.iterations):
                started = time.perf_counter()
                model(input_ids=ids, use_cache=False)
                if i >= 2:
                    times.append((time.perf_counter() - started) * 1e3)
        median = statistics.median(times)
        print(f"{sequences} x {length:<7} {median:>11.2f} {sequences * length / (median / 1e3):>12.0f}")


if __name__ == "__main__":
    main()
