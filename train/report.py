"""Markdown tables of finished IMDB runs: python train/report.py runs > results/imdb_table.md

Reads every RUNS/*/summary.json written by train/imdb.py.
"""
import json
import sys
from pathlib import Path

ORDER = ["ql", "lstm", "bilstm", "gru", "psug", "hgr", "biql", "bigru"]


NOT_SHOWN = {"model", "hidden", "seed", "threads", "data_dir", "out", "no_progress", "resume"}


def command(s):
    """The run's command: model, H where not 128, the other options given (runs that
    recorded them: ``args["given"]``), seed and threads."""
    a = s["args"]
    hidden = f" --hidden {a['hidden']}" if a["hidden"] != 128 else ""
    given = "".join(f" --{k.replace('_', '-')} {a[k]}" for k in a.get("given", []) if k not in NOT_SHOWN)
    return (f"`python train/imdb.py --model {a['model']}{hidden}{given} --seed {a['seed']} "
            f"--threads {a['threads']}`")


def main(root):
    runs = [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/summary.json"))]
    runs.sort(key=lambda s: (ORDER.index(s["model"]) if s["model"] in ORDER else 99,
                             s["args"]["hidden"], s["seed"]))
    print("| model | H | seed | embedding | recurrent | head | total | test acc | macro-F1 | best / run epochs "
          "| wall min | train tok/s | command |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in runs:
        p = s["params"]
        print(f"| {s['model']} | {s['args']['hidden']} | {s['seed']} | {p['embedding']:,} | {p['recurrent']:,} | {p['head']:,} "
              f"| {p['total']:,} | {100 * s['test_accuracy']:.2f}% | {100 * s['test_macro_f1']:.2f}% "
              f"| {s['best_epoch']} / {s['epochs_run']} | {s['wall_seconds'] / 60:.1f} "
              f"| {s['train_tokens_per_s']:,.0f} | {command(s)} |")
    buckets = list(runs[0]["test_by_length"]) if runs else []
    print()
    print("Test accuracy by review length (tokens before truncation; models trained with max_len "
          f"{runs[0]['args']['max_len'] if runs else '?'}):")
    print()
    print("| model | H | seed | " + " | ".join(f"{b} (n={runs[0]['test_by_length'][b]['n']})" for b in buckets) + " |")
    print("|---|---|---|" + "---|" * len(buckets))
    for s in runs:
        cells = " | ".join(f"{100 * s['test_by_length'][b]['accuracy']:.2f}%" for b in buckets)
        print(f"| {s['model']} | {s['args']['hidden']} | {s['seed']} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs")
