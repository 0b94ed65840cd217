#!/usr/bin/python3
"""Latency of a small request while clients flood the server with ~4 MiB prompts.

Usage: bench/prompt_flood.py --addr HOST:PORT --pid SERVER_PID [--clients 8] [--rounds 40]
                             [--flood-nice N]

Times a 20-token greedy Complete call on an idle server, then again while --clients threads send
~4 MiB text prompts (Complete) and ~4 MiB Tokenize calls in a loop, and reports the median and p90
of each, the server's RSS (VmRSS of --pid) before, at its highest during the flood, and after,
and how many flood calls were refused and with what message. With --flood-nice N the flood
clients run in a separate process at `nice -n N`, so that on a small machine they compete less
with the server and the timed client for the same cores. Needs Debian's python3-grpcio and
the protoc / grpc_python_plugin compilers (protobuf-compiler, protobuf-compiler-grpc).
"""
import argparse
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_stubs(out_dir):
    proto_dir = REPO / "proto"
    protos = sorted(str(p) for p in (proto_dir / "kvserve" / "v1").glob("*.proto"))
    subprocess.run([shutil.which("protoc"), f"-I{proto_dir}", f"--python_out={out_dir}",
                    f"--grpc_out={out_dir}",
                    f"--plugin=protoc-gen-grpc={shutil.which('grpc_python_plugin')}", *protos],
                   check=True)
    sys.path.insert(0, str(out_dir))
    from kvserve.v1 import generation_pb2, generation_pb2_grpc  # noqa: E402
    return generation_pb2, generation_pb2_grpc


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def start_flood(args, grpc, pb, pb_grpc, options):
    """Starts the flood threads; returns stop() -> {outcome: count}."""
    big = "a" * ((4 << 20) - 4096)
    stop = threading.Event()
    outcomes = {}
    lock = threading.Lock()

    def flood(index):
        flood_stub = pb_grpc.GenerationStub(grpc.insecure_channel(args.addr, options=options))
        while not stop.is_set():
            try:
                if index % 2 == 0:
                    flood_stub.Complete(pb.GenerateRequest(text=big, max_tokens=4), timeout=60)
                else:
                    flood_stub.Tokenize(pb.TokenizeRequest(text=big), timeout=60)
                key = "OK"
            except grpc.RpcError as e:
                key = f"{e.code().name}: {e.details()[:90]}"
            with lock:
                outcomes[key] = outcomes.get(key, 0) + 1

    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()

    def stop_flood():
        stop.set()
        for t in threads:
            t.join()
        return outcomes

    return stop_flood


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--flood-nice", type=int, default=None,
                        help="run the flood clients in a separate process at this niceness")
    parser.add_argument("--flood-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import grpc
    pb, pb_grpc = load_stubs(pathlib.Path(tempfile.mkdtemp()))
    options = [("grpc.max_send_message_length", 8 << 20)]
    if args.flood_only:
        # Child of --flood-nice: flood until stdin closes, then print the outcomes.
        stop_flood = start_flood(args, grpc, pb, pb_grpc, options)
        print("flooding", flush=True)
        sys.stdin.read()
        print(json.dumps(stop_flood()), flush=True)
        return

    def small_latency(stub):
        request = pb.GenerateRequest(text="Once upon a time", max_tokens=20,
                                     sampling=pb.SamplingParams(temperature=0))
        start = time.perf_counter()
        response = stub.Complete(request, timeout=60)
        assert len(response.token_ids) == 20, response
        return (time.perf_counter() - start) * 1000

    channel = grpc.insecure_channel(args.addr, options=options)
    stub = pb_grpc.GenerationStub(channel)
    for _ in range(5):
        small_latency(stub)
    idle = [small_latency(stub) for _ in range(args.rounds)]
    rss_before = rss_kib(args.pid)

    if args.flood_nice is None:
        stop_flood = start_flood(args, grpc, pb, pb_grpc, options)
    else:
        child = subprocess.Popen(
            ["nice", "-n", str(args.flood_nice), sys.executable, __file__, "--flood-only",
             "--addr", args.addr, "--pid", str(args.pid), "--clients", str(args.clients)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "flooding"

        def stop_flood():
            out, _ = child.communicate("")
            return json.loads(out)
    time.sleep(1.0)
    under = []
    rss_peak = rss_before
    for _ in range(args.rounds):
        under.append(small_latency(stub))
        rss_peak = max(rss_peak, rss_kib(args.pid))
    outcomes = stop_flood()
    rss_after = rss_kib(args.pid)

    def summary(values):
        values = sorted(values)
        return (f"median {statistics.median(values):.1f} ms, "
                f"p90 {values[int(0.9 * (len(values) - 1))]:.1f} ms")

    print(f"small request (20 tokens), idle:        {summary(idle)}")
    print(f"small request (20 tokens), under flood: {summary(under)}")
    print(f"flood: {args.clients} clients"
          + ("" if args.flood_nice is None else f" in a process at nice {args.flood_nice}"))
    print(f"ratio of medians: {statistics.median(under) / statistics.median(idle):.2f}")
    print(f"server RSS: before {rss_before / 1024:.1f} MiB, peak during "
          f"{rss_peak / 1024:.1f} MiB (+{(rss_peak - rss_before) / 1024:.1f}), after "
          f"{rss_after / 1024:.1f} MiB")
    for key, count in sorted(outcomes.items()):
        print(f"flood calls: {count} x {key}")


if __name__ == "__main__":
    main()
