"""In-memory loader throughput (Fashion-MNIST-sized uint8 tensors, pad-2 crop + flip augmentation).

    python benchmarks/bench_loader.py

Prints the best of three quarter-epochs in img/s; machine-dependent, so it is a benchmark, not a test.
"""

import time

import torch

from rbnn.data import BatchAugment, InMemoryLoader


def main() -> None:
    images = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8)
    ld = InMemoryLoader(images, torch.randint(0, 10, (60000,)), 128, mean=(0.286,), std=(0.353,), train=True,
                        augment=BatchAugment(pad=2, flip=True))
    rates = []
    for epoch in range(3):
        ld.set_epoch(epoch)
        t, n = time.perf_counter(), 0
        for i, (_, y) in enumerate(ld):
            n += len(y)
            if i == 120:
                break
        rates.append(n / (time.perf_counter() - t))
    print(f"in-memory loader: {max(rates):,.0f} img/s best of 3 (all: {', '.join(f'{r:,.0f}' for r in rates)}), "
          f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
