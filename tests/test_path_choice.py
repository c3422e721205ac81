"""FUSEDRNN_CUDA_PATH=auto's choice between the standard and the persistent path
on CUDA (csrc/torch/path_choice.h) against the measurements it was drawn from:
both paths timed side by side with cuDNN on an H200 (bench/results/gpu-nvidia-h200).
The persistent path is the `fused-persistent` candidate; the standard path is
`fused-standard`, or `fused` in records of fusedrnn at c8c94aca4454, where auto
ran the standard path everywhere. The rule must pick the faster of the two in
every row. Runs on any machine: the rule is host code.
"""

import json
from pathlib import Path

import pytest

import fusedrnn._C as _C

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "gpu-nvidia-h200"
RECORDS = ["goals.json", "goal-variants.json", "quick-gpu.json"]
AUTO_WAS_STANDARD = "c8c94aca4454"
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
ELEM_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def _measured_rows():
    rows = []
    for name in RECORDS:
        record = json.loads((RESULTS / name).read_text())
        for row in record["rows"]:
            cands = row["candidates"]
            standard = cands.get("fused-standard")
            if standard is None and AUTO_WAS_STANDARD in record["stamp"]:
                standard = cands.get("fused")
            if standard and "fused-persistent" in cands:
                rows.append((f"{name}: {row['key']}", row["case"], standard["median_ms"],
                             cands["fused-persistent"]["median_ms"]))
    return rows


ROWS = _measured_rows()


def _gates(case):
    if case["cell"] == "lstm" and "coupled" in case["variant"]:
        return 3
    return GATES[case["cell"]]


def test_every_record_has_rows_to_check():
    assert len(ROWS) >= 70


@pytest.mark.parametrize("key,case,standard_ms,persistent_ms", ROWS, ids=[r[0] for r in ROWS])
def test_auto_picks_the_faster_path_of_each_measured_row(key, case, standard_ms, persistent_ms):
    pays = _C._persistent_pays(case["T"], case["N"], _gates(case), case["H"], "proj" in case["variant"],
                               ELEM_BYTES[case["dtype"]], True, case["mode"] == "training")
    picked, other = (persistent_ms, standard_ms) if pays else (standard_ms, persistent_ms)
    assert picked <= other, (f"auto takes the {'persistent' if pays else 'standard'} path: {picked:.3g} ms "
                             f"against {other:.3g} ms on the other")


@pytest.mark.parametrize("elem_bytes", [2, 4, 8])
def test_unmeasured_layers_stay_on_the_standard_path(elem_bytes):
    """Projections, float64 and sequences under 16 steps were not measured."""
    assert not _C._persistent_pays(1024, 1, 4, 64, True, elem_bytes, True, False)
    assert not _C._persistent_pays(15, 1, 4, 64, False, elem_bytes, True, False)
    assert _C._persistent_pays(16, 1, 4, 64, False, elem_bytes, True, False) == (elem_bytes != 8)


@pytest.mark.parametrize("training", [False, True])
def test_16_bit_products_on_cuda_cores_get_the_float32_limit(training):
    """Without tensor cores (before sm_80) a 16-bit product runs on CUDA cores, as
    float32's does, which lost beyond 2^22 multiply-adds a step (N=16, H=768: 2^25)."""
    assert _C._persistent_pays(1024, 16, 4, 768, False, 2, True, training)
    assert not _C._persistent_pays(1024, 16, 4, 768, False, 2, False, training)
    assert _C._persistent_pays(1024, 16, 4, 256, False, 2, False, training)
