"""The environment stamp of a run and the machine's name for bench/results/<machine>/."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import torch

import fusedrnn

REPO = Path(__file__).resolve().parent.parent


def _cpuinfo() -> dict:
    info = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            info.setdefault(k, v)
    return info


def _amd_zen(family: int, model: int) -> Optional[str]:
    """AMD's micro-architecture from the CPUID family and model (AMD's public tables)."""
    if family == 0x17:
        return "zen2" if model >= 0x30 else "zen"
    if family == 0x19:
        return "zen4" if (0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF) else "zen3"
    if family == 0x1A:
        return "zen5"
    return None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> dict:
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or "unknown cpu"
    vendor = info.get("vendor_id", "")
    arch = None
    try:
        fam, mod = int(info.get("cpu family", "0")), int(info.get("model", "0"))
        if vendor == "AuthenticAMD":
            arch = _amd_zen(fam, mod)
    except ValueError:
        pass
    cores = usable_cores()
    flags = info.get("flags", "").split()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile") if f in flags]
    return {"name": name, "vendor": vendor, "microarch": arch, "cores": cores, "flags": isa}


def _slug(s: str) -> str:
    s = re.sub(r"\((r|tm|c)\)", "", s, flags=re.I)
    s = re.sub(r"\b(cpu|processor|\d+-core)\b|@.*$", "", s, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def machine_name(device: str) -> str:
    """cpu-amd-epyc-zen5-2c, gpu-nvidia-h100-80gb-hbm3, ..."""
    if device == "cuda" and torch.cuda.is_available():
        return "gpu-" + _slug(torch.cuda.get_device_name())
    cpu = cpu_model()
    slug = _slug(cpu["name"])
    if cpu["microarch"] and cpu["microarch"] not in slug:
        slug += "-" + cpu["microarch"]
    return f"cpu-{slug}-{cpu['cores']}c"


def _onednn_version() -> Optional[str]:
    m = re.search(r"(?:oneDNN|MKL-DNN)\s+v?(\d+\.\d+(?:\.\d+)?)", torch.__config__.show())
    return m.group(1) if m else None


def _git() -> dict:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return {"commit": head or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(tf32: bool) -> dict:
    cpu = cpu_model()
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fusedrnn": fusedrnn.__version__,
        "git": _git(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu": cpu,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "backend_info": fusedrnn.backend_info(),
        "threads": {
            "torch_default": torch.get_num_threads(),
            "interop": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        },
        "onednn": {"available": torch.backends.mkldnn.is_available(), "version": _onednn_version()},
        "load_average_start": load_average(),
        "tf32_requested": tf32,
        "cuda": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["cuda"] = {
            "device": torch.cuda.get_device_name(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sm_count": props.multi_processor_count,
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "tf32_requested": tf32,
        }
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            if out:
                env["cuda"]["driver"] = out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def cuda_only(script: str) -> bool:
    """The start of a GPU-only script: False, with a note on stderr, where there is no CUDA
    device; else TF32 switched off for matmuls and cuDNN (float32 rows multiply exactly, as
    their tables say)."""
    if not torch.cuda.is_available():
        print(f"{script}: needs a CUDA device", file=sys.stderr)
        return False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return True


def write_gpu_results(out: Optional[str], stem: str, title: str, data: dict, lines: List[str]) -> Path:
    """A GPU script's results: <stem>.json ({"env": ..., **data}) and <stem>.md (the title, the
    stamp of this machine and run, then `lines`) under `out`, or bench/results/<machine>.
    Returns the folder."""
    return write_results("cuda", out, stem, title, data, lines)


def write_results(device: str, out: Optional[str], stem: str, title: str, data: dict,
                  lines: List[str]) -> Path:
    """write_gpu_results for the machine of `device` (cpu or cuda)."""
    machine = machine_name(device)
    env = environment(tf32=False)
    folder = Path(out) if out else Path(__file__).resolve().parent / "results" / machine
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps({"env": env, **data}, indent=1) + "\n")
    (folder / f"{stem}.md").write_text("\n".join([f"# {title}", "", stamp(env, machine), ""] + lines) + "\n")
    print(f"wrote {folder / stem}.json and .md")
    return folder


def stamp(env: dict, machine: str) -> str:
    """One line that says where and when: for tables and plot titles."""
    parts = [machine, env["date"][:16].replace("T", " ") + " UTC", f"torch {env['torch']}"]
    parts.append(f"fusedrnn {env['fusedrnn']}" + (f" @ {env['git']['commit']}" if env["git"].get("commit") else "")
                 + ("+dirty" if env["git"].get("dirty") else ""))
    if machine.startswith("gpu") and env.get("cuda"):
        c = env["cuda"]
        parts.append(f"CUDA {c['cuda_runtime']}, cuDNN {c['cudnn']}, TF32 {'on' if c['tf32_requested'] else 'off'}")
    else:
        cpu = env["cpu"]
        parts.append(f"{cpu['name']}{' (' + cpu['microarch'] + ')' if cpu['microarch'] else ''}, {cpu['cores']} cores, "
                     f"ISA {env['backend_info'].get('cpu_isa')}, oneDNN {env['onednn']['version']}"
                     + (", TF32 allowed (--tf32)" if env.get("tf32_requested") else ""))
    return " | ".join(parts)
