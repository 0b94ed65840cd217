#!/usr/bin/env python3
"""Turns the outputs of bench/run_all.sh into Markdown tables and writes them into RESULTS.md
between the markers "<!-- run_all:begin -->" and "<!-- run_all:end -->" (appended at the end when
the markers are missing). Standard library only.

usage: run_all_report.py WORK_DIR RESULTS_MD
"""
import glob
import json
import os
import re
import statistics
import sys

BEGIN = "<!-- run_all:begin -->"
END = "<!-- run_all:end -->"


def load(path):
    with open(path) as f:
        return json.load(f)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def runs(work, prefix):
    """The reports PREFIX_1.json, PREFIX_2.json, ... in the order of their run number."""
    paths = glob.glob(os.path.join(work, prefix + "_*.json"))
    number = lambda p: int(os.path.basename(p)[len(prefix) + 1:-len(".json")])
    return [load(p) for p in sorted(paths, key=number)]


def fmt(v, digits=1):
    if v != v:  # NaN
        return "n/a"
    return f"{v:,.{digits}f}"


def verdict(ok):
    return "**met**" if ok else "**not met**"


def human_time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:,.2f} µs"
    return f"{ns:,.1f} ns"


def to_ns(value, unit):
    return value * {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]


def gbench_table(path, title, per_op):
    data = load(path)
    rows = []
    for b in data.get("benchmarks", []):
        if b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"])
        real = to_ns(b["real_time"], b["time_unit"])
        cpu = to_ns(b["cpu_time"], b["time_unit"])
        rate = ""
        if "bytes_per_second" in b:
            rate = f"{b['bytes_per_second'] / 1e9:,.2f} GB/s"
        elif "items_per_second" in b:
            ips = b["items_per_second"]
            rate = f"{ips / 1e6:,.2f} M/s" + (f" ({1e9 / ips:,.1f} ns/op)" if per_op else "")
        rows.append(f"| `{name}` | {b.get('label', '')} | {human_time(real)} | "
                    f"{human_time(cpu)} | {rate} |")
    out = [f"#### {title}", "",
           "| benchmark | label | wall (median) | CPU (median) | rate (per CPU second) |",
           "|---|---|---|---|---|"]
    return out + rows + [""]


def kernel_ratios(path):
    """Ratios the KV-format and batching targets are stated in, from the kernels_bench medians."""
    data = load(path)
    wall = {}
    for b in data.get("benchmarks", []):
        if b.get("aggregate_name") == "median":
            wall[b.get("run_name", b["name"])] = to_ns(b["real_time"], b["time_unit"])
    out = []
    ref = wall.get("BM_AttentionDecode/ctx:32768/fmt:1/threads:2/real_time")
    if ref:
        parts = []
        for fmt_id, fmt_name in enumerate(["fp32", "fp16", "bf16", "fp8", "int8", "int4", "nvfp4",
                                           "int2"]):
            t = wall.get(f"BM_AttentionDecode/ctx:32768/fmt:{fmt_id}/threads:2/real_time")
            if t:
                parts.append(f"{fmt_name} {t / ref:.2f}×")
        out.append("- Attention decode at 32K context (2 threads), wall time relative to FP16: "
                   + ", ".join(parts) + ".")
    n1 = wall.get("BM_MatMul/rows:768/cols:768/n:1/dtype:1/threads:2")
    n32 = wall.get("BM_MatMul/rows:768/cols:768/n:32/dtype:1/threads:2")
    if n1 and n32:
        out.append(f"- MatMul 768 × 768, F16 weights, 2 threads: 32 rows take {n32 / n1:.1f}× the "
                   f"time of one row: {32 * n1 / n32:.1f}× cheaper per row when batched (these 1.2 MB "
                   "of weights stay in cache; the 110m model's 220 MB do not, which makes one "
                   "stream memory-bound and batching worth more there).")
    return out + [""] if out else []


def serving_section(work, m):
    one = runs(work, "streams1")
    many = runs(work, "streams32")
    if not one or not many:
        return []
    tput1 = med([r["output_throughput"] for r in one])
    tput32 = med([r["output_throughput"] for r in many])
    itl1_med = med([r["itl_ms"]["median"] for r in one])
    itl32_p99 = med([r["itl_ms"]["p99"] for r in many])
    ratio = tput32 / tput1
    itl_ratio = itl32_p99 / itl1_med
    rows = []
    for label, rs in (("1", one), ("32", many)):
        rows.append(
            f"| {label} | {fmt(med([r['output_throughput'] for r in rs]))} | "
            f"{fmt(med([r['ttft_ms']['median'] for r in rs]))} | "
            f"{fmt(med([r['tpot_ms']['median'] for r in rs]))} | "
            f"{fmt(med([r['itl_ms']['median'] for r in rs]))} | "
            f"{fmt(med([r['itl_ms']['p99'] for r in rs]))} | "
            f"{fmt(med([r['e2e_ms']['median'] for r in rs]), 0)} | "
            f"{sum(r['server']['preemptions'] for r in rs)} |")
    return [
        "### Serving: 110m shape, FP16 KV, 1 vs 32 streams",
        "",
        "Command: `kvserve mkmodel --shape 110m --dtype f16 --seed 1`; `kvserve serve` with "
        "`kv_cache.format=fp16`, `kv_cache.budget_mb=512`, `engine.threads=0` (both cores); "
        "`kvserve bench --concurrency C --num-requests N --input-len 128 --output-len 128` "
        f"(C = 1, N = 4; C = 32, N = 32), {m['reps']} runs each, alternating. Medians over the runs.",
        "",
        "| streams | output tok/s | TTFT median (ms) | TPOT median (ms) | ITL median (ms) | "
        "ITL p99 (ms) | E2E median (ms) | preemptions |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- 32 streams / 1 stream output tokens/s: **{ratio:.2f}×** (target ≥ 8×: "
        f"{verdict(ratio >= 8)}).",
        f"- p99 ITL at 32 streams / median ITL of one stream: **{itl_ratio:.2f}×** (target < 4×: "
        f"{verdict(itl_ratio < 4)}).",
        "",
    ]


def capacity_section(work, m):
    out = []
    caps = {}
    for fmt_name in ("fp16", "int4"):
        path = os.path.join(work, f"cap_{fmt_name}.json")
        if os.path.exists(path):
            caps[fmt_name] = load(path)
    if len(caps) < 2:
        return out
    eq = {f: runs(work, f"eq_{f}") for f in caps}
    rows = []
    measured = {}
    for f, r in caps.items():
        s = r["server"]
        # Sequences running at once without a preemption: the peak when none happened.
        measured[f] = s["peak_running_requests"] if s["preemptions"] == 0 else None
        rows.append(f"| {f} | {r['num_requests']} | {s['peak_running_requests']} | "
                    f"{s['peak_waiting_requests']} | {s['preemptions']} | "
                    f"{s['peak_used_bytes'] / 1048576:,.1f} | {r['completed']} | "
                    f"{fmt(r['output_throughput'], 2)} |")
    tput = {f: med([r["output_throughput"] for r in eq[f]]) for f in eq}
    budget = int(m.get("budget_bytes", "0"))
    fit = int(m.get("fit_fp16", "0"))
    out += [
        "### KV capacity: INT4 vs FP16 in one byte budget (110m shape)",
        "",
        f"One KV budget of {budget:,} bytes ({budget / 1048576:.2f} MiB: {fit} sequences of 1,024 "
        "tokens in FP16), prefix cache off. All requests are sent at once (960 prompt + 64 output "
        f"tokens each): FP16 gets {fit + 1}, one more than it holds; INT4 gets {3 * fit + 1}, one "
        "more than 3× that. `kvserve bench --num-requests R --concurrency R --input-len 960 "
        "--output-len 64`. Peaks and preemptions come from the server's Memory service, sampled "
        "every 50 ms.",
        "",
        "| KV format | requests sent | peak running | peak waiting | preemptions | "
        "peak KV used (MiB) | completed | output tok/s |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    fp16 = caps["fp16"]["server"]
    int4 = caps["int4"]["server"]
    if measured.get("fp16") and measured.get("int4"):
        ratio = measured["int4"] / measured["fp16"]
        bound = "≥ " if measured["int4"] >= caps["int4"]["num_requests"] else ""
        out.append(f"- Concurrent 1,024-token sequences without preemption, INT4 / FP16: "
                   f"{bound}{measured['int4']} / {measured['fp16']} = **{bound}{ratio:.2f}×** "
                   f"(target ≥ 3×: {verdict(ratio >= 3)}).")
    elif measured.get("fp16"):
        # INT4 preempted: fewer sequences than its peak fit without preemption.
        upper = int4["peak_running_requests"] / measured["fp16"]
        out.append(f"- INT4 ran up to {int4['peak_running_requests']} sequences at once but "
                   f"preempted {int4['preemptions']} time(s): fewer than "
                   f"{int4['peak_running_requests']} fit without preemption, against "
                   f"{measured['fp16']} for FP16 (no preemption). INT4 / FP16 < **{upper:.2f}×** "
                   f"(target ≥ 3×: {verdict(False) if upper <= 3 else 'not determined'}).")
    else:
        out.append(f"- FP16 preempted ({fp16['preemptions']}): the capacity could not be read "
                   "as a peak without preemption (see the table).")
    t_ratio = tput["int4"] / tput["fp16"]
    # Runs alternate FP16, INT4, FP16, ...: the ratio of each pair, measured back to back.
    pairs = [i["output_throughput"] / f["output_throughput"]
             for f, i in zip(eq["fp16"], eq["int4"])]
    out += [
        f"- Output tokens/s at equal concurrency (4 sequences, {m['reps']} runs each, alternating "
        f"between the two servers, median): FP16 {fmt(tput['fp16'])}, INT4 {fmt(tput['int4'])}: "
        f"INT4 / FP16 = **{t_ratio:.3f}×** (target ≥ 1: {verdict(t_ratio >= 1)}); run by run "
        + " / ".join(f"{x:.3f}×" for x in pairs) + ".",
        "",
    ]
    return out


def load_section(work, m):
    paced = runs(work, "load2000")
    fast = runs(work, "loadmax")
    if not paced:
        return []

    def row(label, rs):
        cpu = [r["load_generator"]["cpu_user_s"] + r["load_generator"]["cpu_system_s"] for r in rs]
        return (f"| {label} | {fmt(med([r['request_throughput'] for r in rs]))} | "
                f"{sum(r['failed'] for r in rs)} | {fmt(med(cpu), 2)} | "
                f"{fmt(med([100 * r['load_generator']['cpu_fraction_of_one_core'] for r in rs]))} | "
                f"{fmt(med([1e6 * c / r['num_requests'] for c, r in zip(cpu, rs)]))} | "
                f"{fmt(med([r['e2e_ms']['p99'] for r in rs]), 2)} |")

    achieved = med([r["request_throughput"] for r in paced])
    cpu_share = med([r["load_generator"]["cpu_fraction_of_one_core"] for r in paced])
    failed = sum(r["failed"] for r in paced)
    # Sustained: the offered rate is reached, nothing fails, and the client has headroom.
    ok = achieved >= 0.97 * 2000 and failed == 0 and cpu_share < 0.5
    return [
        "### Load generator: tiny requests on loopback",
        "",
        "stories260K, FP32 KV, one engine thread; requests of 4 prompt tokens and 1 output token. "
        "`kvserve bench --num-requests 6000 --request-rate 2000` (Poisson) and `--concurrency 64` "
        f"(as fast as the server answers), {m['reps']} runs each. CPU is the load generator's own "
        "(getrusage over the run, gRPC threads included).",
        "",
        "| run | requests/s | failed | client CPU (s) | client CPU (% of one core) | "
        "client CPU per request (µs) | E2E p99 (ms) |",
        "|---|---|---|---|---|---|---|",
        row("Poisson 2,000/s", paced),
        row("unthrottled, 64 in flight", fast) if fast else "",
        "",
        f"- Sustains 2,000 requests/s: achieved {fmt(achieved)} requests/s (a Poisson sample of "
        f"6,000 arrivals), {failed} failed, using {100 * cpu_share:.1f}% of one core "
        f"(target: {verdict(ok)}).",
        "",
    ]


def main(work, results_path):
    m = {}
    with open(os.path.join(work, "machine.txt")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            m[k] = v
    section = [
        BEGIN,
        "## Suite results (generated by bench/run_all.sh)",
        "",
        f"Generated {m['date']} by `bench/run_all.sh` (REPS={m['reps']}) at commit {m['commit']} "
        f"in {int(m.get('elapsed_s', '0')) // 60} min {int(m.get('elapsed_s', '0')) % 60} s. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; load average "
        f"{m['load_start']} at the start and {m.get('load_end', '?')} at the end (the machine is "
        "shared with other builds: wall times are noisy, ratios are measured side by side). This "
        "section is rewritten by every run; edit the text outside the markers.",
        "",
    ]
    section += serving_section(work, m)
    section += capacity_section(work, m)
    section += load_section(work, m)
    section += ["### Micro-benchmarks", "",
                f"Google Benchmark, `--benchmark_repetitions={m['reps']} "
                "--benchmark_report_aggregates_only=true --benchmark_min_time=0.2`; medians.", ""]
    if os.path.exists(os.path.join(work, "kernels.json")):
        section += gbench_table(os.path.join(work, "kernels.json"),
                                "kernels_bench: quantize-on-write (KvEncodeBlock), attention decode "
                                "per format and context, matmul, memory bandwidth", False)
        section += kernel_ratios(os.path.join(work, "kernels.json"))
    if os.path.exists(os.path.join(work, "pool.json")):
        section += gbench_table(os.path.join(work, "pool.json"),
                                "pool_bench: block pool and prefix cache, per operation", True)
    section.append(END)
    text = ""
    if os.path.exists(results_path):
        with open(results_path) as f:
            text = f.read()
    block = "\n".join(section)
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(results_path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
