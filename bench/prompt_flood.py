#!/usr/bin/python3
"""Latency of a small request while clients flood the server with ~4 MiB prompts.

Usage: bench/prompt_flood.py --addr HOST:PORT --pid SERVER_PID [--clients 8] [--rounds 40]

Times a 20-token greedy Complete call on an idle server, then again while --clients threads send
~4 MiB text prompts (Complete) and ~4 MiB Tokenize calls in a loop, and reports the median and p90
of each, the server's RSS (VmRSS of --pid) before, at its highest during the flood, and after,
and how many flood calls were refused and with what message. Needs Debian's python3-grpcio and
the protoc / grpc_python_plugin compilers (protobuf-compiler, protobuf-compiler-grpc).
"""
import argparse
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    import grpc
    pb, pb_grpc = load_stubs(pathlib.Path(tempfile.mkdtemp()))
    options = [("grpc.max_send_message_length", 8 << 20)]

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

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    under = []
    rss_peak = rss_before
    for _ in range(args.rounds):
        under.append(small_latency(stub))
        rss_peak = max(rss_peak, rss_kib(args.pid))
    stop.set()
    for t in threads:
        t.join()
    rss_after = rss_kib(args.pid)

    def summary(values):
        values = sorted(values)
        return (f"median {statistics.median(values):.1f} ms, "
                f"p90 {values[int(0.9 * (len(values) - 1))]:.1f} ms")

    print(f"small request (20 tokens), idle:        {summary(idle)}")
    print(f"small request (20 tokens), under flood: {summary(under)}")
    print(f"ratio of medians: {statistics.median(under) / statistics.median(idle):.2f}")
    print(f"server RSS: before {rss_before / 1024:.1f} MiB, peak during "
          f"{rss_peak / 1024:.1f} MiB (+{(rss_peak - rss_before) / 1024:.1f}), after "
          f"{rss_after / 1024:.1f} MiB")
    for key, count in sorted(outcomes.items()):
        print(f"flood calls: {count} x {key}")


if __name__ == "__main__":
    main()
