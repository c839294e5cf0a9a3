#!/usr/bin/env python3
"""Writes the load benchmark's figures into BENCHMARKS.md.

    report.py --harness DIR --benchmarks FILE --command CMD [--verify FILE]
              [--name TARGET=LABEL ...] [--note TEXT ...] CASE=RESULT_DIR ...

Each CASE=RESULT_DIR is one run of the anchor harness's run.sh (its folder of wrk
outputs, <target>.r<round>.txt). For every target it gives the median req/s with
its range, the ratios to nginx and to HAProxy as the median of per-round paired
ratios (the target divided by the anchor measured in the same round), p50, p99,
peak RSS and the error counts. The wrk outputs are parsed by the harness's own
scripts/summarize.py. The result replaces what lies between the load-benchmark
markers in FILE (they are appended when FILE has none); everything else in FILE is
left as it is.
"""
import argparse
import datetime
import glob
import os
import statistics
import sys

BEGIN = "<!-- load-benchmark:begin (written by benches/load/report.py) -->"
END = "<!-- load-benchmark:end -->"
ANCHORS = ("nginx", "haproxy")


def load_runs(result_dir, parse):
    """{target: {round: parsed wrk output}} and the targets in run order."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(result_dir, "*.r*.txt"))):
        target, round_ = os.path.basename(path)[: -len(".txt")].rsplit(".r", 1)
        runs.setdefault(target, {})[int(round_)] = parse(path)
    order_file = os.path.join(result_dir, "targets")
    order = []
    if os.path.exists(order_file):
        with open(order_file) as f:
            order = [t.strip() for t in f if t.strip() in runs]
    return runs, order + sorted(t for t in runs if t not in order)


def paired_ratio(rounds, anchor_rounds):
    """Median (min, max) of the per-round ratios, or None without a common round."""
    ratios = [rounds[r]["rps"] / anchor_rounds[r]["rps"]
              for r in rounds if r in anchor_rounds and anchor_rounds[r]["rps"] > 0]
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios)


def fmt_ratio(ratio, bold):
    if ratio is None:
        return "—"
    med, lo, hi = ratio
    text = f"{med:.2f}"
    if bold:
        text = f"**{text}**"
    return text if lo == hi else f"{text} ({lo:.2f}–{hi:.2f})"


def case_table(runs, order, names):
    head = ("| target | req/s median (min–max) | ÷ nginx (paired) | ÷ HAProxy (paired) "
            "| p50 ms | p99 ms | peak RSS MiB | non-2xx | socket errors |")
    lines = [head, "|" + "---|" * 9]
    for target in order:
        rounds = runs[target]
        rps = [r["rps"] for r in rounds.values()]
        ours = target.startswith("port:")
        ratios = [fmt_ratio(paired_ratio(rounds, runs[a]), ours) if a in runs and a != target
                  else ("1" if a == target else "—") for a in ANCHORS]
        hwm = [r["hwm"] for r in rounds.values() if r["hwm"] is not None]
        rss = f"{max(hwm) / 1024:.1f}" if hwm else "n/a"
        label = names.get(target, target)
        cells = [
            f"**{label}**" if ours else label,
            f"{statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f})",
            ratios[0],
            ratios[1],
            f"{statistics.median(r['p50'] for r in rounds.values()):.3f}",
            f"{statistics.median(r['p99'] for r in rounds.values()):.3f}",
            rss,
            str(sum(r["non2xx"] for r in rounds.values())),
            str(sum(r["sockerr"] for r in rounds.values())),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def meta_line(result_dir, key):
    path = os.path.join(result_dir, "meta.txt")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        for line in f:
            if line.startswith(key):
                return line[len(key):].strip()
    return ""


def foreign_max(runs):
    values = [r["foreign"] for rounds in runs.values() for r in rounds.values()
              if r["foreign"] is not None]
    return max(values) if values else None


def render(args, parse):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    names = dict(n.split("=", 1) for n in args.name)
    out = [BEGIN, "", f"## Side by side with nginx, HAProxy and Apache ({now})", "",
           "Written by the command below on this machine; every table is one run of the "
           "anchor harness, its targets alternating round by round.", "",
           "```", args.command, "```", ""]
    out += [f"- {note}" for note in args.note]
    if args.note:
        out.append("")
    if args.verify and os.path.exists(args.verify):
        with open(args.verify) as f:
            out += ["Enforcement check (`verify.sh`):", "", "```", f.read().rstrip(), "```", ""]
    for case in args.cases:
        label, result_dir = case.rsplit("=", 1)
        runs, order = load_runs(result_dir, parse)
        if not runs:
            sys.exit(f"no wrk outputs in {result_dir}")
        rounds = max(len(r) for r in runs.values())
        foreign = foreign_max(runs)
        out += [f"### {label}", "",
                f"wrk: `{meta_line(result_dir, 'wrk:')}`; {rounds} round(s); "
                f"highest foreign CPU during a run: {foreign if foreign is not None else 'n/a'} %; "
                f"raw output `{os.path.basename(result_dir)}`.", ""]
        out += case_table(runs, order, names)
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def splice(path, block):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--harness", required=True, help="the scratch copy of ../shared/bench")
    parser.add_argument("--benchmarks", required=True, help="BENCHMARKS.md to update")
    parser.add_argument("--command", required=True, help="the command that produced the run")
    parser.add_argument("--verify", help="verify.sh output to include")
    parser.add_argument("--name", action="append", default=[], help="TARGET=LABEL")
    parser.add_argument("--note", action="append", default=[], help="a line under the command")
    parser.add_argument("cases", nargs="+", help="CASE=RESULT_DIR")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(args.harness, "scripts"))
    from summarize import parse  # the harness's own wrk parser
    splice(args.benchmarks, render(args, parse))
    print(f"[report] updated {args.benchmarks}")


if __name__ == "__main__":
    main()
