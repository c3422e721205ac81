"""A character-level language model on a small built-in text, with fusedrnn.

Trains an LSTM (or GRU) to predict the next character, then samples one
character at a time, feeding each one back with the recurrent state.

    python examples/char_lm.py --cell lstm --steps 300
"""

import argparse
import time

import torch
import torch.nn as nn

import fusedrnn

TEXT = """\
The river runs past the mill and under the old stone bridge, and the children
throw sticks from one side and race to the other to see them come out again.
In the spring the water is high and brown and fast; in the late summer it is
low and clear, and you can see the small fish holding still against the current.
The miller says the river has been running past the mill for longer than there
have been mills, and that it will run past long after the mill is gone.
"""


class CharModel(nn.Module):
    def __init__(self, vocab: int, hidden: int, cell: str, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        rnn = fusedrnn.LSTM if cell == "lstm" else fusedrnn.GRU
        self.rnn = rnn(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        y, state = self.rnn(self.embed(x), state)
        return self.head(y), state


def batches(data: torch.Tensor, seq_len: int, batch: int, gen: torch.Generator):
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
    x = torch.stack([data[s : s + seq_len] for s in starts])
    y = torch.stack([data[s + 1 : s + seq_len + 1] for s in starts])
    return x, y


@torch.no_grad()
def sample(model, stoi, itos, prompt: str, length: int, temperature: float, gen):
    model.eval()
    x = torch.tensor([[stoi[c] for c in prompt]])
    logits, state = model(x)
    out = list(prompt)
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=gen)
        out.append(itos[int(nxt)])
        logits, state = model(nxt.view(1, 1), state)
    model.train()
    return "".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--sample-len", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    chars = sorted(set(TEXT))
    stoi = {c: i for i, c in enumerate(chars)}
    itos = {i: c for c, i in stoi.items()}
    data = torch.tensor([stoi[c] for c in TEXT])

    model = CharModel(len(chars), args.hidden, args.cell, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    first = last = None
    for step in range(1, args.steps + 1):
        x, y = batches(data, args.seq_len, args.batch, gen)
        logits, _ = model(x)
        loss = loss_fn(logits.reshape(-1, len(chars)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
        if step % max(1, args.steps // 5) == 0 or step == args.steps:
            print(f"step {step:4d}  loss {last:.3f}  ({time.perf_counter() - t0:.1f} s)")
    print(f"loss {first:.3f} -> {last:.3f}")
    print("sample:", repr(sample(model, stoi, itos, "The ", args.sample_len, args.temperature, gen)))
    return first, last


if __name__ == "__main__":
    main()
