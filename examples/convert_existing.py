"""Convert an existing torch.nn model to fusedrnn, check it, and time it.

An ordinary model built with torch.nn.LSTM and nn.GRUCell is trained for a
few steps, then `fusedrnn.convert` swaps its recurrent modules in place (the
parameters, and the optimizer built before, carry over). `fusedrnn.testing`
checks the converted modules against the reference; the script then times a
training step of the model before and after, in alternation, and prints the
median of each (a rough figure on a busy machine: bench/run.py measures with
its spread and the load).

    python examples/convert_existing.py
"""

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn

import fusedrnn


class Tagger(nn.Module):
    """A sequence tagger with a refinement cell run over the LSTM's outputs."""

    def __init__(self, n_in=32, hidden=128, n_out=10):
        super().__init__()
        self.encoder = nn.LSTM(n_in, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.refine = nn.GRUCell(2 * hidden, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        y, _ = self.encoder(x)
        h = torch.zeros(x.shape[0], self.refine.hidden_size)
        outs = []
        for t in range(y.shape[1]):
            h = self.refine(y[:, t], h)
            outs.append(h)
        return self.head(torch.stack(outs, dim=1))


def train_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def time_step(model, opt, x, y):
    t0 = time.perf_counter()
    train_step(model, opt, x, y)
    return time.perf_counter() - t0


def median_steps(models, x, y, rounds):
    """Median time of a training step of each model, timed in alternation."""
    opts = [torch.optim.SGD(m.parameters(), lr=0.0) for m in models]
    for m, o in zip(models, opts):
        train_step(m, o, x, y)
    times = [[] for _ in models]
    for _ in range(rounds):
        for m, o, t in zip(models, opts, times):
            t.append(time_step(m, o, x, y))
    return [statistics.median(t) for t in times]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--timed", type=int, default=10, help="timed rounds (one step of each model a round)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(16, 50, 32)
    y = torch.randint(0, 10, (16, 50))
    for _ in range(args.steps):
        loss = train_step(model, opt, x, y)
    print(f"trained torch.nn model, loss {loss:.3f}")

    reference_copy = copy.deepcopy(model)

    fusedrnn.convert(model)  # in place; `opt` still holds the same parameters
    print("converted:", type(model.encoder).__name__, type(model.refine).__name__)
    with torch.no_grad():
        same = torch.allclose(model(x), reference_copy(x), rtol=1e-4, atol=1e-5)
    print("same function as before conversion:", same)
    fusedrnn.testing.assert_matches_reference(model.encoder, x)
    fusedrnn.testing.assert_matches_reference(model.refine, torch.randn(16, 256), torch.randn(16, 128))
    print("fusedrnn.testing.assert_matches_reference: passed")
    loss = train_step(model, opt, x, y)
    print(f"one more step with the optimizer built before the conversion: loss {loss:.3f}")

    t_nn, t_fused = median_steps([reference_copy, model], x, y, args.timed)
    print(f"training step (median of {args.timed}, in alternation): torch.nn {t_nn * 1e3:.1f} ms, "
          f"fusedrnn {t_fused * 1e3:.1f} ms ({t_nn / t_fused:.2f}x) on {torch.get_num_threads()} threads")
    return same


if __name__ == "__main__":
    main()
