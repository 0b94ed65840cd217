#!/usr/bin/env python3
"""Holds many concurrent streaming connections on kvserve's HTTP API and reports what they cost.

Starts `kvserve serve` on a model (HTTP on a free port, gRPC and metrics off the usual ports),
samples the server's threads and resident memory idle, then opens STREAMS streaming
/v1/completions requests at once (each on its own connection), reads each response's headers and
first event, holds every connection open with its response unread for HOLD seconds while sampling
the server again, then reads every stream to `data: [DONE]` and checks it. Prints one JSON object.

  bench/http_streams.py --kvserve build/kvserve --model ../shared/models/stories260K.gguf \
      --streams 500 --hold 5

Standard library only.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {"threads": int(fields["Threads"]), "rss_kib": int(fields["VmRSS"].split()[0])}


def start_server(args):
    cmd = [args.kvserve, "serve", "--config", args.config, "--set", f"model.path={args.model}",
           "--set", "server.address=127.0.0.1:0", "--set", "metrics.address=",
           "--set", "http.address=127.0.0.1:0", "--set", f"http.threads={args.http_threads}",
           "--set", f"scheduler.max_waiting_requests={max(256, 2 * args.streams)}",
           "--set", "logging.level=info", "--set", "engine.threads=1"]
    log = open(args.log, "w+")
    proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        log.seek(0)
        m = re.search(r"HTTP API on http://[0-9.]+:([0-9]+)", log.read())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    log.seek(0)
    sys.exit("the server did not start:\n" + log.read())


def open_stream(port, body):
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Type: application/json\r\nContent-Length: " + str(len(data)).encode() +
              b"\r\n\r\n" + data)
    return s


def read_until(s, buf, marker, timeout):
    s.settimeout(timeout)
    while marker not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--kvserve", default=os.path.join(root, "build", "kvserve"))
    p.add_argument("--config", default=os.path.join(root, "configs", "server.yaml"))
    p.add_argument("--model", default=os.path.join(root, "..", "shared", "models",
                                                   "stories260K.gguf"))
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--http-threads", type=int, default=2)
    p.add_argument("--log", default="/tmp/kvserve_http_streams.log")
    args = p.parse_args()

    proc, port = start_server(args)
    try:
        time.sleep(0.5)
        idle = proc_status(proc.pid)
        body = {"prompt": "Once upon a time", "max_tokens": args.max_tokens, "ignore_eos": True,
                "temperature": 0, "stream": True}
        t0 = time.time()
        socks, bufs, errors = [], [], []
        for _ in range(args.streams):
            socks.append(open_stream(port, body))
        for i, s in enumerate(socks):
            buf = read_until(s, b"", b"\n\ndata: ", 30)
            if not buf.startswith(b"HTTP/1.1 200"):
                errors.append(f"stream {i}: {buf[:80]!r}")
            bufs.append(buf)
        opened_s = time.time() - t0
        samples = []
        hold_end = time.time() + args.hold
        while time.time() < hold_end:
            samples.append(proc_status(proc.pid))
            time.sleep(0.25)
        done = 0
        for i, s in enumerate(socks):
            buf = read_until(s, bufs[i], b"data: [DONE]\n\n", 60)
            if b"data: [DONE]\n\n" in buf and b'"error"' not in buf:
                done += 1
            else:
                errors.append(f"stream {i}: no [DONE]")
            s.close()
        result = {
            "streams": args.streams,
            "http_threads": args.http_threads,
            "max_tokens": args.max_tokens,
            "opened_and_first_event_s": round(opened_s, 3),
            "server_idle": idle,
            "server_holding_max": {
                "threads": max(x["threads"] for x in samples),
                "rss_kib": max(x["rss_kib"] for x in samples),
            },
            "completed_with_done": done,
            "errors": errors[:10],
            "error_count": len(errors),
        }
        print(json.dumps(result, indent=2))
        return 0 if not errors and done == args.streams else 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
