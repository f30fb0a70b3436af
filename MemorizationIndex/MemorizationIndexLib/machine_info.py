"""The machine a measurement ran on: CPU, cores, memory, GPU and the numeric libraries' versions.

Benchmarks and speed figures record it beside their numbers. The same code on another CPU can give
other low-order bits (the libraries pick their vector kernels by CPU), and a figure that amplifies
them, such as the paper-faithful baseline's unshrunk whitening, then moves (docs/method.md §7.71).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import faiss
import numpy as np
import torch


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a /proc file, or None where there is none."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == key), None)


def machine() -> dict:
    """This host: CPU model, cores, RAM (GiB), GPU (None without CUDA), torch/FAISS/numpy versions and threads.

    Python's version is there too."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(int(memory.split()[0]) / 1024 / 1024, 1) if memory else float("nan"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe(info: dict) -> str:
    """One line for a report: ``AMD EPYC (2 cores, 23.5 GiB), no GPU; torch 2.13.0, faiss 1.15.1, numpy 2.4.6``."""
    gpu = info.get("gpu") or "no GPU"
    return (
        f"{info['cpu']} ({info['cpu_cores']} cores, {info['ram_gib']} GiB), {gpu}; "
        f"torch {info['torch']}, faiss {info['faiss']}, numpy {info['numpy']}"
    )
