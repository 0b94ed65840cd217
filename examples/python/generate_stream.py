#!/usr/bin/env python3
"""Streams a generation from a running kvserve server and prints it as it arrives.

Output matches `kvserve generate`: the prompt, then the completion, then a newline, on stdout.
Usage and timings of the request go to stderr.

The gRPC stubs are generated from proto/kvserve/v1/*.proto with protoc and grpc_python_plugin
(Debian packages protobuf-compiler and protobuf-compiler-grpc): pass --stubs DIR with stubs
generated there, or let the script generate them into a temporary directory. See README.md.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]


def generate_stubs(out_dir):
    """Runs protoc with the Python and gRPC plugins over proto/kvserve/v1 into out_dir."""
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if protoc is None or plugin is None:
        sys.exit("generate_stream.py: protoc and grpc_python_plugin are needed to generate the "
                 "stubs (apt-get install protobuf-compiler protobuf-compiler-grpc), or pass "
                 "--stubs DIR")
    proto_dir = REPO / "proto"
    protos = sorted(str(p) for p in (proto_dir / "kvserve" / "v1").glob("*.proto"))
    subprocess.run([protoc, f"-I{proto_dir}", f"--python_out={out_dir}",
                    f"--grpc_out={out_dir}", f"--plugin=protoc-gen-grpc={plugin}", *protos],
                   check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server address, host:port")
    parser.add_argument("--prompt", default="Once upon a time", help="prompt text")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1]")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--api-key", default=os.environ.get("KVSERVE_API_KEY"),
                        help="API key (default: $KVSERVE_API_KEY)")
    parser.add_argument("--tls-ca", default=None, help="PEM CA file: connect with TLS")
    parser.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    parser.add_argument("--stubs", default=None,
                        help="directory with the generated kvserve/v1/*_pb2*.py modules")
    args = parser.parse_args()

    stubs = args.stubs
    temp = None
    if stubs is None:
        temp = tempfile.TemporaryDirectory(prefix="kvserve_stubs_")
        stubs = temp.name
        generate_stubs(stubs)
    sys.path.insert(0, stubs)

    import grpc  # pylint: disable=import-outside-toplevel
    from kvserve.v1 import common_pb2  # pylint: disable=import-outside-toplevel
    from kvserve.v1 import generation_pb2  # pylint: disable=import-outside-toplevel
    from kvserve.v1 import generation_pb2_grpc  # pylint: disable=import-outside-toplevel

    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            channel = grpc.secure_channel(args.addr, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.addr)
    stub = generation_pb2_grpc.GenerationStub(channel)

    request = generation_pb2.GenerateRequest(text=args.prompt, max_tokens=args.max_tokens)
    request.sampling.temperature = args.temperature
    if args.top_p is not None:
        request.sampling.top_p = args.top_p
    if args.seed is not None:
        request.sampling.seed = args.seed
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None

    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    last = None
    try:
        for message in stub.Generate(request, metadata=metadata, timeout=args.timeout):
            sys.stdout.write(message.text)
            sys.stdout.flush()
            last = message
    except grpc.RpcError as error:
        sys.stdout.write("\n")
        print(f"generate_stream.py: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    if last is not None:
        usage, timings = last.usage, last.timings
        print(f"request {last.request_id}: {usage.prompt_tokens} prompt tokens "
              f"({usage.cached_prompt_tokens} cached), {usage.completion_tokens} generated; "
              f"finish reason {common_pb2.FinishReason.Name(last.finish_reason)}; "
              f"first token after {timings.time_to_first_token.ToMicroseconds() / 1000:.1f} ms, "
              f"total {timings.total.ToMicroseconds() / 1000:.1f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
