#!/usr/bin/env python3
"""An independent GGUF v3 reader (Python standard library only) used to check files we write.

Follows the GGUF specification (ggml-org/ggml docs/gguf.md): little-endian header "GGUF", version,
tensor count, metadata count; typed metadata key/values; tensor infos (name, dims, ggml type,
offset); data section at the next multiple of general.alignment (default 32).

Checks what any GGUF reader relies on: known value and tensor types, offsets aligned and inside the
file, tensors not overlapping, byte sizes matching their shapes. Prints one JSON object describing
the file (metadata scalars, array lengths and a few elements, tensor shapes and types), or a line
"error: ..." and exit status 1.

usage: gguf_reader.py FILE
"""
import json
import struct
import sys

# value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
# ggml types: (name, block size, bytes per block)
GGML = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2)}


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"truncated at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self):
        n = self.take("<Q")
        if self.pos + n > len(self.data):
            raise ValueError(f"string of {n} bytes at byte {self.pos} runs past the end")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8")

    def value(self, vtype):
        if vtype in SCALAR:
            return self.take(SCALAR[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype = self.take("<I")
            n = self.take("<Q")
            return [self.value(etype) for _ in range(n)]
        raise ValueError(f"unknown value type {vtype} at byte {self.pos}")


def main(path):
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    if data[:4] != b"GGUF":
        raise ValueError("bad magic")
    r.pos = 4
    version = r.take("<I")
    if version != 3:
        raise ValueError(f"version {version}, expected 3")
    n_tensors = r.take("<Q")
    n_kv = r.take("<Q")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.take("<I")
        dims = [r.take("<Q") for _ in range(n_dims)]
        ttype = r.take("<I")
        offset = r.take("<Q")
        tensors.append((name, dims, ttype, offset))
    alignment = meta.get("general.alignment", 32)
    data_start = (r.pos + alignment - 1) // alignment * alignment
    spans = []
    out_tensors = {}
    for name, dims, ttype, offset in tensors:
        if ttype not in GGML:
            raise ValueError(f"tensor {name}: unknown type {ttype}")
        tname, block, block_bytes = GGML[ttype]
        count = 1
        for d in dims:
            count *= d
        if dims[0] % block:
            raise ValueError(f"tensor {name}: ne[0] {dims[0]} not a multiple of {block}")
        nbytes = count // block * block_bytes
        if offset % alignment:
            raise ValueError(f"tensor {name}: offset {offset} not aligned to {alignment}")
        if data_start + offset + nbytes > len(data):
            raise ValueError(f"tensor {name}: data runs past the end of the file")
        spans.append((offset, offset + nbytes, name))
        out_tensors[name] = {"shape": dims, "type": tname, "bytes": nbytes}
    spans.sort()
    for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ValueError(f"tensors {an} and {bn} overlap")
    summary = {}
    for key, value in meta.items():
        if isinstance(value, list):
            summary[key] = {"length": len(value), "first": value[:8]}
        else:
            summary[key] = value
    print(json.dumps({"metadata": summary, "tensors": out_tensors, "file_bytes": len(data)},
                     sort_keys=True))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except (ValueError, UnicodeDecodeError, OSError) as e:
        print(f"error: {e}")
        sys.exit(1)
