"""The demo's work unit: a word list the guest counts with the sample job's ``sort | uniq -c``.

The top-level ``job.xml`` copies the input into the guest and runs
``sort input.txt | uniq -c > output.txt`` there. Some tens of megabytes of
words keep the guest busy for tens of seconds under TCG (about 3 s per 8 MB
on this machine kind), long enough for periodic CPU-time trickles; the host
counts the same words while it makes them, so the demo checks the uploaded
output byte for byte.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass

#: The vocabulary: few distinct words, so the output stays a short table.
WORDS = ("electron", "muon", "tau", "photon", "gluon", "quark", "neutrino", "higgs",
         "pion", "kaon", "proton", "neutron")


@dataclass(frozen=True)
class Workload:
    """The work unit's input and the output the job must upload for it."""

    input: bytes
    expected_output: bytes


def word_counts(counts: collections.Counter[str]) -> bytes:
    """What ``LC_ALL=C sort | uniq -c`` prints for these counts (GNU: the count in 7 columns)."""
    return "".join(f"{n:7d} {word}\n" for word, n in sorted(counts.items())).encode()


def make_workload(size_bytes: int, seed: int = 8) -> Workload:
    """About ``size_bytes`` of words from :data:`WORDS`, one per line; the same for a seed."""
    if size_bytes <= 0:
        raise ValueError(f"input size {size_bytes} bytes: must be positive")
    rng = random.Random(seed)
    mean_line = sum(len(w) + 1 for w in WORDS) / len(WORDS)
    words = rng.choices(WORDS, k=max(1, round(size_bytes / mean_line)))
    data = ("\n".join(words) + "\n").encode()
    return Workload(data, word_counts(collections.Counter(words)))
