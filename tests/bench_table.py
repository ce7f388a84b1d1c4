# SPDX-License-Identifier: BSD-3-Clause
"""The benchmark scripts' tables (bench.sh)."""


def print_table(hdr, rows):
    """Print hdr and rows in columns: the first left-aligned, the others
    right-aligned, a rule under the header."""
    w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    for i, row in enumerate([hdr] + rows):
        print("  ".join(str(x).ljust(w[k]) if k == 0 else str(x).rjust(w[k])
                        for k, x in enumerate(row)))
        if i == 0:
            print("  ".join("-" * x for x in w))
