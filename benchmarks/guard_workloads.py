"""The workloads of ``benchmarks/guard.py``: what users do that fills a kernel's memory.

Each workload is the fill cells of a notebook. ``guard.py`` puts them between a first
cell ``keep = 'alive'`` (the earlier variable that must survive), a setup cell, and a
last cell ``print(keep)``. The setup cell defines, for the fill cells:

* ``LIMIT``: the run's memory limit in bytes, so every size is a share of it;
* ``np``, ``os``, ``CSV`` (a CSV file whose frame is about 10 % of the limit);
* ``used()``: this kernel's resident memory now, and ``room(share)``: the bytes to add
  to reach ``share`` of the limit (a fill level is measured, not assumed, since the
  kernel itself holds 60–150 MiB before the first fill cell);
* ``raised``: the errors of cells run so far. Every fill cell after the first runs only
  while it is empty, as a user stops after a MemoryError: ``--allow-errors`` would
  otherwise run the next fill cells into a death the guard had already averted.

``expect`` is what the workload does without the guard: ``death`` (it needs more than
the limit: ``guard.py --verify`` checks each one with ``--no-guard``) or ``fit`` (it
stays below the guard threshold of 90 %, so a guard trip is a false trip).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    expect: str  # "death" or "fit"
    fill: str  # the fill level, in words
    cells: tuple[str, ...]
    quick: bool = False  # in the --quick subset
    csv: bool = False  # needs the CSV file


def _np_cells(upto: float, step: float = 0.05) -> tuple[str, ...]:
    count = round(upto / step)
    if upto < 1:  # a fill that must stay below the level: never past it
        add = f"arrays.append(np.ones(min(int({step} * LIMIT), room({upto})), np.uint8))"
    else:
        add = f"arrays.append(np.ones(int({step} * LIMIT), np.uint8))"
    return ("arrays = []", *([add] * count))


WORKLOADS: tuple[Workload, ...] = (
    # NumPy.
    Workload("np-cells", "death", "5 % arrays, one a cell, to 150 %", _np_cells(1.5), quick=True),
    Workload(
        "np-loop",
        "death",
        "5 % arrays in one cell's loop, to 200 %",
        ("arrays = []\nfor _ in range(40):\n    arrays.append(np.ones(LIMIT // 20, np.uint8))",),
        quick=True,
    ),
    Workload(
        "one-shot-150", "death", "one array of 150 %", ("big = np.ones(LIMIT * 3 // 2, np.uint8)",)
    ),
    Workload(
        "one-shot-400",
        "death",
        "one array of 400 %",
        ("big = np.ones(LIMIT * 4, np.uint8)",),
        quick=True,
    ),
    Workload(
        "concat-30",
        "death",
        "np.concatenate of two 30 % arrays",
        (
            "a = np.ones(int(0.3 * LIMIT), np.uint8)",
            "b = np.ones(int(0.3 * LIMIT), np.uint8)",
            "c = np.concatenate([a, b])",
        ),
    ),
    Workload(
        "20-at-85",
        "death",
        "one 20 % array at 85 %",
        ("ballast = np.ones(room(0.85), np.uint8)", "extra = np.ones(int(0.2 * LIMIT), np.uint8)"),
        quick=True,
    ),
    Workload(
        "50-at-70",
        "death",
        "np.ones(0.5 × limit) at 70 %",
        ("ballast = np.ones(room(0.70), np.uint8)", "big = np.ones(LIMIT // 2, np.uint8)"),
    ),
    Workload(
        "image-stack",
        "death",
        "1080p frames to 60 %, then np.stack",
        (
            "frames = []\nwhile used() < 0.6 * LIMIT:\n"
            "    frames.append(np.full((1080, 1920, 3), len(frames) % 256, np.uint8))",
            "stack = np.stack(frames)",
        ),
    ),
    # Plain Python.
    Workload(
        "py-strings",
        "death",
        "short strings appended in a for loop",
        ("names = []\nfor i in range(10**12):\n    names.append(f'item-{i}')",),
        quick=True,
    ),
    Workload(
        "bytes-doubling",
        "death",
        "s = s + s from 1 MiB",
        ("s = b'x' * (1 << 20)\nwhile True:\n    s = s + s",),
        quick=True,
    ),
    Workload(
        "dict-growth",
        "death",
        "d[i] = i in a for loop",
        ("d = {}\nfor i in range(10**12):\n    d[i] = i",),
    ),
    Workload(
        "list-growth",
        "death",
        "xs.extend([0] * 10**6) in a loop",
        ("xs = []\nzeros = [0] * 1_000_000\nwhile True:\n    xs.extend(zeros)",),
    ),
    Workload(
        "str-building",
        "death",
        "s += 4 KiB chunk in a function",
        (
            "def build():\n    s = ''\n    chunk = 'x' * 4096\n    while True:\n"
            "        s += chunk\n\nbuild()",
        ),
    ),
    # pandas.
    Workload(
        "pd-read-csv",
        "death",
        "read_csv of a 10 % frame, kept, in a loop",
        ("import pandas as pd\nframes = []", "while True:\n    frames.append(pd.read_csv(CSV))"),
        quick=True,
        csv=True,
    ),
    Workload(
        "pd-concat",
        "death",
        "df = pd.concat([df, df]) from 10 %",
        (
            "import pandas as pd\ndf = pd.DataFrame(np.ones((LIMIT // 800, 10)))",
            "while True:\n    df = pd.concat([df, df], ignore_index=True)",
        ),
    ),
    Workload(
        "pd-merge",
        "death",
        "many-to-many merge, result 300 %",
        (
            "import pandas as pd\nn = 200_000\nk = max(1, n * n * 24 // (3 * LIMIT))\n"
            "left = pd.DataFrame({'key': np.arange(n) % k, 'a': np.arange(n)})\n"
            "right = pd.DataFrame({'key': np.arange(n) % k, 'b': np.arange(n)})",
            "joined = left.merge(right, on='key')",
        ),
    ),
    # Workloads that fit: the guard must leave them alone.
    Workload(
        "fit-70",
        "fit",
        "to 70 % at once, then work on it",
        ("ballast = np.ones(room(0.70), np.uint8)", "total = int(ballast[::4096].sum())"),
        quick=True,
    ),
    Workload("fit-cells-85", "fit", "5 % arrays, one a cell, to 85 %", _np_cells(0.85), quick=True),
    Workload(
        "fit-20-at-60",
        "fit",
        "one 20 % array at 60 %",
        ("ballast = np.ones(room(0.60), np.uint8)", "extra = np.ones(int(0.2 * LIMIT), np.uint8)"),
    ),
    Workload(
        "fit-churn-80",
        "fit",
        "at 80 %, 5 % temporaries made and freed",
        (
            "ballast = np.ones(room(0.80), np.uint8)",
            *(["for _ in range(10):\n    t = np.ones(LIMIT // 20, np.uint8)\n    del t"] * 5),
        ),
    ),
    Workload(
        "fit-csv-70",
        "fit",
        "read_csv frames kept to about 70 %",
        (
            "import pandas as pd\nframes = []",
            "while used() < 0.55 * LIMIT:\n    frames.append(pd.read_csv(CSV))",
        ),
        csv=True,
    ),
)

BY_NAME = {w.name: w for w in WORKLOADS}
