"""The lines (or SASS instructions) where a kernel's warps stalled most, from the CSV source
pages that scripts/gpu-ncu.sh writes (``ncu --page source --csv``).

    python bench/ncu_top.py ncu_source_lines_ql.csv [--top 25]

A page may hold several kernels, each with its own header row; every row whose cells name a
"Warp Stall Sampling (All Samples)" column starts a new table.  Prints, per table, its rows
with the most samples, their share of the table's samples and their text.  Where the page has
a column per stall reason (``stall_wait``, ``stall_long_sb``, ...: the SASS page), it prints
first each reason's share of the table's samples, and after each row the row's main reason.
"""
import argparse
import csv


def tables(path):
    """(header, rows) for each table of the CSV page at path."""
    header, rows, out = None, [], []
    with open(path, newline="", errors="replace") as f:
        for row in csv.reader(f):
            if any("Stall Sampling (All" in cell for cell in row):
                if header:
                    out.append((header, rows))
                header, rows = row, []
            elif header and len(row) == len(header):
                rows.append(row)
    if header:
        out.append((header, rows))
    return out


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def reasons(header):
    """{reason: column} for the page's per-reason stall columns (all samples, not the
    "(Not Issued)" ones)."""
    return {h[len("stall_"):]: j for j, h in enumerate(header) if h.startswith("stall_") and "Not Issued" not in h}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    found = tables(args.csv)
    if not found:
        print(f"{args.csv}: no table with a warp stall sampling column")
    for i, (header, rows) in enumerate(found):
        col = next(j for j, h in enumerate(header) if "Stall Sampling (All" in h)
        text = [j for j, h in enumerate(header) if h in ("# Address", "Address", "Source", "# Source", "Line", "#")]
        why = reasons(header)
        total = sum(number(r[col]) for r in rows) or 1.0
        print(f"table {i}: {len(rows)} rows, {total:.0f} samples; columns: {', '.join(header[:8])} ...")
        if why:
            shares = sorted(((sum(number(r[j]) for r in rows), name) for name, j in why.items()), reverse=True)
            print("  stall reasons: " + ", ".join(f"{name} {n / total:.1%}" for n, name in shares if n))
        for r in sorted(rows, key=lambda r: -number(r[col]))[:args.top]:
            main_reason = max(why, key=lambda name: number(r[why[name]])) if why else None
            print(f"  {number(r[col]) / total:6.1%}  " + " | ".join(r[j].strip()[:110] for j in text)
                  + (f"  ({main_reason})" if main_reason and number(r[why[main_reason]]) else ""))


if __name__ == "__main__":
    main()
