"""The VM tier's speed probe: seconds for a fixed piece of pure-Python work (the best of three), run on
the host by scripts/vm/run.sh just before the boot and in the guest by guest.sh; their ratio is how
much slower the guest runs (TCG, on a host that other work keeps busy)."""

import time


def once() -> float:
    t = time.perf_counter()
    sum(range(2_000_000))
    return time.perf_counter() - t


print(f"{min(once() for _ in range(3)):.4f}")
