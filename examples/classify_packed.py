"""Variable-length sequence classification with a PackedSequence and a
bidirectional fusedrnn.GRU.

Task (synthetic, so it needs nothing downloaded): each sequence is a run of
random tokens of length 3 to 40; the label is whether token 1 occurs more often
than token 2. The sequences are padded, packed with their true lengths
(unsorted) and fed to the GRU; the final states of both directions classify.

    python examples/classify_packed.py --steps 300
"""

import argparse
import time

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import fusedrnn

VOCAB = 8


def make_batch(batch: int, gen: torch.Generator):
    lengths = torch.randint(3, 41, (batch,), generator=gen)
    seqs = [torch.randint(0, VOCAB, (int(n),), generator=gen) for n in lengths]
    labels = torch.tensor([int((s == 1).sum() > (s == 2).sum()) for s in seqs])
    return pad_sequence(seqs, batch_first=True), lengths, labels


class Classifier(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.rnn = fusedrnn.GRU(32, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)  # [2, N, H]: final state of each direction, in the input's order
        return self.head(torch.cat([h_n[0], h_n[1]], dim=-1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = Classifier(args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens, lengths, labels = make_batch(args.batch, gen)
        loss = loss_fn(model(tokens, lengths), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - t0:.1f} s)")

    model.eval()
    with torch.no_grad():
        tokens, lengths, labels = make_batch(1000, gen)
        acc = (model(tokens, lengths).argmax(-1) == labels).float().mean().item()
    print(f"held-out accuracy {acc:.3f} (chance {max(labels.float().mean().item(), 1 - labels.float().mean().item()):.3f})")
    return acc


if __name__ == "__main__":
    main()
