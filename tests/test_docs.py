"""The Python examples of the documentation run as written."""

import re
from pathlib import Path

import torch

import fusedrnn

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(doc):
    return re.findall(r"^```python\n(.*?)^```", (ROOT / doc).read_text(), re.S | re.M)


def test_the_readme_example_runs():
    (code,) = python_blocks("README.md")
    encoder = torch.nn.LSTM(256, 512, batch_first=True)
    ns = {"model": torch.nn.Sequential(encoder)}
    exec(compile(code, "README.md", "exec"), ns)
    swapped = ns["model"][0]
    assert isinstance(swapped, fusedrnn.LSTM) and swapped.weight_hh_l0 is encoder.weight_hh_l0
    assert isinstance(ns["lstm"], fusedrnn.LSTM) and ns["lstm"].num_layers == 2
    assert ns["peephole"].weight_ch_l0.shape == (2 * 512,)


def test_the_examples_of_docs_testing_pass():
    ns = {}
    for i, code in enumerate(python_blocks("docs/testing.md")):
        exec(compile(code, f"docs/testing.md block {i}", "exec"), ns)
    tests = [f for name, f in ns.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 2
    torch.manual_seed(0)
    for test in tests:
        test()
