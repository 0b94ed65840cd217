#!/usr/bin/python3
"""Reference forward pass of GGUF transformer models in plain NumPy (float64).

An implementation independent of the engine, used by the C++ tests as the source of expected
logits and expected dequantized weights. It reads a GGUF v3 file, dequantizes every weight it uses
to float64 and runs the whole sequence teacher-forced with causal attention at positions 0..T-1.

Architectures (the value of general.architecture), with llama.cpp semantics:
  llama  rotary embedding on adjacent pairs (x[2i], x[2i+1]); optional rope_freqs.weight
  qwen2  biases on q, k, v; NEOX rotary (pairs x[i], x[i + n_rot/2])
  qwen3  NEOX rotary; per-head RMSNorm of q and k (attn_q_norm / attn_k_norm) before the rotary
  phi3   NEOX rotary; fused attn_qkv.weight; fused ffn_up.weight (gate rows, then up rows);
         with rope_factors_short/long present, the short factors are used: the served context
         never exceeds phi3.rope.scaling.original_context_length, which is where llama.cpp
         switches to the long factors. phi3.rope.scaling.attn_factor, when present, scales the
         cos and sin of the rotary embedding.

Common to all: x = token_embd[id]; per layer x += attn(rmsnorm(x) * attn_norm), then
x += ffn_down(silu(gate) * up) of rmsnorm(x) * ffn_norm; logits = (rmsnorm(x) * output_norm) @
output^T, with token_embd in place of output when output.weight is absent. Grouped-query attention
maps query head h to KV head h // (n_head / n_head_kv); scores are scaled by 1/sqrt(head_dim).
The rotary angle of pair i at position p is p * freq_scale * base^(-2i/n_rot) / ff[i], with n_rot =
{arch}.rope.dimension_count (default head_dim; dimensions past n_rot are not rotated), freq_scale =
1/{arch}.rope.scaling.factor for linear scaling (else 1), ff the frequency factors (else 1).

Tensor types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (block
layouts of ggml: 32-element blocks, and 256-element super-blocks for the K types).

usage:
  reference_forward.py MODEL.gguf --ids "1 2 3" [--positions-out]
      prints {"arch", "vocab_size", "logits": [[vocab_size floats] per position]}; with
      --positions-out, also "ids" and "positions" (the position of each row of logits).
  reference_forward.py MODEL.gguf --dequant TENSOR
      prints {"name", "type", "shape": [rows, cols], "values": [row-major floats]}; a tensor with
      more than two dimensions has rows = the product of all but its first (ggml ne[0]) dimension.
On failure prints "error: ..." on stderr and exits with status 1; without NumPy, exits with
status 3 (scripts/install-deps.sh installs python3-numpy).
"""
import argparse
import json
import math
import struct
import sys

try:
    import numpy as np
except ImportError:
    print("error: NumPy is not installed for this Python (apt-get install python3-numpy)",
          file=sys.stderr)
    sys.exit(3)

# ---------------------------------------------------------------------------------------------
# GGUF container

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
GGUF_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
              10: "<u8", 11: "<i8", 12: "<f8"}
GGUF_STRING, GGUF_ARRAY = 8, 9

QK_K = 256
# ggml type id: (name, elements per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    10: ("Q2_K", QK_K, 84),
    11: ("Q3_K", QK_K, 110),
    12: ("Q4_K", QK_K, 144),
    13: ("Q5_K", QK_K, 176),
    14: ("Q6_K", QK_K, 210),
    30: ("BF16", 1, 2),
}
# other ggml types, named in error messages only
OTHER_TYPE_NAMES = {4: "Q4_2", 5: "Q4_3", 9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
                    18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
                    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
                    29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}


class InputError(Exception):
    """A problem with the input, reported as 'error: ...'."""


class GGUFFile:
    """Metadata and tensor directory of a GGUF v3 file; tensor data is read on demand."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        self.pos = 0
        if self.data[:4] != b"GGUF":
            raise InputError(f"{path}: not a GGUF file (bad magic)")
        self.pos = 4
        version = self._take("<I")
        if version not in (2, 3):
            raise InputError(f"{path}: GGUF version {version} not supported")
        n_tensors = self._take("<Q")
        n_kv = self._take("<Q")
        self.meta = {}
        for _ in range(n_kv):
            key = self._string()
            self.meta[key] = self._value(self._take("<I"))
        self.tensors = {}
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._take("<I")
            dims = [self._take("<Q") for _ in range(n_dims)]
            ttype = self._take("<I")
            offset = self._take("<Q")
            self.tensors[name] = (dims, ttype, offset)
        alignment = self.meta.get("general.alignment", 32)
        self.data_start = (self.pos + alignment - 1) // alignment * alignment

    def _take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise InputError(f"file truncated at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def _string(self):
        n = self._take("<Q")
        if self.pos + n > len(self.data):
            raise InputError(f"string at byte {self.pos} runs past the end of the file")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def _value(self, vtype):
        if vtype in GGUF_SCALARS:
            return self._take(GGUF_SCALARS[vtype])
        if vtype == GGUF_STRING:
            return self._string()
        if vtype == GGUF_ARRAY:
            etype = self._take("<I")
            n = self._take("<Q")
            if etype in GGUF_NUMPY:
                dt = np.dtype(GGUF_NUMPY[etype])
                end = self.pos + n * dt.itemsize
                if end > len(self.data):
                    raise InputError(f"array at byte {self.pos} runs past the end")
                arr = np.frombuffer(self.data, dtype=dt, count=n, offset=self.pos)
                self.pos = end
                return arr.tolist()
            return [self._value(etype) for _ in range(n)]
        raise InputError(f"unknown metadata value type {vtype} at byte {self.pos}")

    def has(self, name):
        return name in self.tensors

    def type_name(self, name):
        ttype = self.tensors[name][1]
        if ttype in GGML_TYPES:
            return GGML_TYPES[ttype][0]
        return OTHER_TYPE_NAMES.get(ttype, f"type {ttype}")

    def tensor(self, name):
        """The tensor as float64, shaped with ggml's ne reversed (ne[0] is the last axis)."""
        if name not in self.tensors:
            raise InputError(f"tensor {name} not found")
        dims, ttype, offset = self.tensors[name]
        if ttype not in GGML_TYPES:
            raise InputError(
                f"tensor {name}: unsupported tensor type {self.type_name(name)} ({ttype})")
        tname, block, block_bytes = GGML_TYPES[ttype]
        count = 1
        for d in dims:
            count *= d
        if dims and dims[0] % block:
            raise InputError(f"tensor {name}: ne[0] {dims[0]} is not a multiple of the "
                                  f"{tname} block size {block}")
        nbytes = count // block * block_bytes
        start = self.data_start + offset
        if start + nbytes > len(self.data):
            raise InputError(f"tensor {name}: data runs past the end of the file")
        raw = np.frombuffer(self.data, dtype=np.uint8, count=nbytes, offset=start)
        values = DEQUANT[tname](raw, count)
        return values.reshape(tuple(reversed(dims)) if dims else ())


# ---------------------------------------------------------------------------------------------
# Dequantization (vectorized over blocks). Each function takes the raw bytes of a tensor and
# its element count and returns a flat float64 array.

def _f16(cols):
    """Little-endian fp16 stored in byte columns (..., 2) -> float64 (...)."""
    return np.ascontiguousarray(cols).view("<f2")[..., 0].astype(np.float64)


def _blocks(raw, block_bytes):
    return raw.reshape(-1, block_bytes)


def dq_f32(raw, n):
    return np.frombuffer(raw.tobytes(), dtype="<f4", count=n).astype(np.float64)


def dq_f16(raw, n):
    return np.frombuffer(raw.tobytes(), dtype="<f2", count=n).astype(np.float64)


def dq_bf16(raw, n):
    bits = np.frombuffer(raw.tobytes(), dtype="<u2", count=n).astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)


def dq_q8_0(raw, n):
    b = _blocks(raw, 34)
    d = _f16(b[:, 0:2])
    q = b[:, 2:34].view(np.int8).astype(np.float64)
    return (q * d[:, None]).reshape(-1)


def _nibbles_32(qs):
    """16 bytes per block -> 32 values: low nibbles are elements 0..15, high ones 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32)


def _high_bits_32(qh_bytes):
    """4 bytes per block, a little-endian uint32 whose bit j is the 5th bit of element j."""
    qh = np.ascontiguousarray(qh_bytes).view("<u4")[:, 0].astype(np.uint64)
    return ((qh[:, None] >> np.arange(32, dtype=np.uint64)[None, :]) & 1).astype(np.int32)


def dq_q4_0(raw, n):
    b = _blocks(raw, 18)
    d = _f16(b[:, 0:2])
    q = _nibbles_32(b[:, 2:18]) - 8
    return (q * d[:, None]).reshape(-1)


def dq_q4_1(raw, n):
    b = _blocks(raw, 20)
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    q = _nibbles_32(b[:, 4:20])
    return (q * d[:, None] + m[:, None]).reshape(-1)


def dq_q5_0(raw, n):
    b = _blocks(raw, 22)
    d = _f16(b[:, 0:2])
    q = (_nibbles_32(b[:, 6:22]) | (_high_bits_32(b[:, 2:6]) << 4)) - 16
    return (q * d[:, None]).reshape(-1)


def dq_q5_1(raw, n):
    b = _blocks(raw, 24)
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    q = _nibbles_32(b[:, 8:24]) | (_high_bits_32(b[:, 4:8]) << 4)
    return (q * d[:, None] + m[:, None]).reshape(-1)


def _two_bit_planes(qs):
    """64 bytes per super-block -> (nb, 16, 16) 2-bit values in output order.

    The super-block is two halves of 128 values; half n uses bytes qs[32n:32n+32]; within a half,
    shift 2j (j = 0..3) gives 32 values: bytes 0..15 (sub-block 8n+2j) then bytes 16..31
    (sub-block 8n+2j+1)."""
    nb = qs.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)
    v = (qs.reshape(nb, 2, 1, 32) >> shifts.reshape(1, 1, 4, 1)) & 3
    return v.reshape(nb, 16, 16).astype(np.int32)


def dq_q2_k(raw, n):
    b = _blocks(raw, 84)
    scales = b[:, 0:16]
    q = _two_bit_planes(b[:, 16:80])
    d = _f16(b[:, 80:82])
    dmin = _f16(b[:, 82:84])
    sc = (scales & 0xF).astype(np.float64)        # low 4 bits: scale
    mn = (scales >> 4).astype(np.float64)         # high 4 bits: min
    dl = (d[:, None] * sc)[:, :, None]
    ml = (dmin[:, None] * mn)[:, :, None]
    return (dl * q - ml).reshape(-1)


def dq_q3_k(raw, n):
    b = _blocks(raw, 110)
    nb = b.shape[0]
    hmask = b[:, 0:32]
    q = _two_bit_planes(b[:, 32:96])
    s = b[:, 96:108].astype(np.int32)
    d = _f16(b[:, 108:110])
    # 16 six-bit scales: low 4 bits from bytes 0..7 (low nibble for scales 0..7, high nibble for
    # 8..15), high 2 bits from byte 8 + i%4 at bit 2*(i//4); stored with an offset of 32.
    i = np.arange(16)
    low = np.where(i < 8, s[:, i % 8] & 0xF, s[:, i % 8] >> 4)
    high = (s[:, 8 + i % 4] >> (2 * (i // 4))) & 3
    scale = ((low | (high << 4)) - 32).astype(np.float64)
    # high bit of value (half n, shift j, byte l) is bit 4n+j of hmask[l]; when clear subtract 4
    bit = np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1)
    h = ((hmask.reshape(nb, 1, 1, 32) >> bit) & 1).reshape(nb, 16, 16).astype(np.int32)
    vals = q - 4 * (1 - h)
    return ((d[:, None] * scale)[:, :, None] * vals).reshape(-1)


def _scale_min_k4(s):
    """12 bytes of packed 6-bit (scale, min) pairs for 8 sub-blocks -> two (nb, 8) arrays."""
    s = s.astype(np.int32)
    sc = np.empty((s.shape[0], 8), dtype=np.int32)
    mn = np.empty((s.shape[0], 8), dtype=np.int32)
    sc[:, 0:4] = s[:, 0:4] & 63
    mn[:, 0:4] = s[:, 4:8] & 63
    sc[:, 4:8] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float64), mn.astype(np.float64)


def dq_q4_k(raw, n):
    b = _blocks(raw, 144)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qs = b[:, 16:144].reshape(nb, 4, 1, 32)
    # chunk c of 32 bytes: low nibbles are sub-block 2c, high nibbles sub-block 2c+1
    q = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(nb, 8, 32).astype(np.float64)
    out = (d[:, None] * sc)[:, :, None] * q - (dmin[:, None] * mn)[:, :, None]
    return out.reshape(-1)


def dq_q5_k(raw, n):
    b = _blocks(raw, 176)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qh = b[:, 16:48]
    qs = b[:, 48:176].reshape(nb, 4, 1, 32)
    low = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(nb, 8, 32).astype(np.int32)
    # the 5th bit of sub-block k (= 2c + half) is bit k of qh[l]
    bit = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    high = ((qh.reshape(nb, 1, 32) >> bit) & 1).astype(np.int32)
    q = (low + 16 * high).astype(np.float64)
    out = (d[:, None] * sc)[:, :, None] * q - (dmin[:, None] * mn)[:, :, None]
    return out.reshape(-1)


def dq_q6_k(raw, n):
    b = _blocks(raw, 210)
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 2, 32)       # half n, byte group g (l or l + 32), l
    qh = b[:, 128:192].reshape(nb, 2, 1, 32)     # half n, l
    scales = b[:, 192:208].view(np.int8).astype(np.float64)
    d = _f16(b[:, 208:210])
    # within half n, quarter k = 0..3 (values 32k + l): low nibble of group k for k < 2, high
    # nibble of group k - 2 otherwise; upper 2 bits from qh[l] at bit 2k
    low = np.concatenate([ql & 0xF, ql >> 4], axis=2).astype(np.int32)   # (nb, 2, 4, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high = ((qh >> shifts) & 3).astype(np.int32)
    q = ((low | (high << 4)) - 32).reshape(nb, 16, 16).astype(np.float64)
    return ((d[:, None] * scales)[:, :, None] * q).reshape(-1)


DEQUANT = {
    "F32": dq_f32, "F16": dq_f16, "BF16": dq_bf16, "Q8_0": dq_q8_0,
    "Q4_0": dq_q4_0, "Q4_1": dq_q4_1, "Q5_0": dq_q5_0, "Q5_1": dq_q5_1,
    "Q2_K": dq_q2_k, "Q3_K": dq_q3_k, "Q4_K": dq_q4_k, "Q5_K": dq_q5_k, "Q6_K": dq_q6_k,
}

# ---------------------------------------------------------------------------------------------
# Forward pass

ARCHS = ("llama", "qwen2", "qwen3", "phi3")


def rmsnorm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x):
    return x / (1.0 + np.exp(-x))


class Model:
    def __init__(self, gguf):
        self.g = gguf
        arch = gguf.meta.get("general.architecture")
        if arch not in ARCHS:
            raise InputError(f"unsupported architecture {arch!r} (supported: "
                                  f"{', '.join(ARCHS)})")
        self.arch = arch
        self.n_embd = int(self._key("embedding_length"))
        self.n_layer = int(self._key("block_count"))
        self.n_head = int(self._key("attention.head_count"))
        self.n_head_kv = int(self._key("attention.head_count_kv", self.n_head))
        if self.n_head_kv <= 0 or self.n_head % self.n_head_kv:
            raise InputError(f"head_count {self.n_head} is not a multiple of head_count_kv "
                                  f"{self.n_head_kv}")
        self.head_dim = int(self._key("attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(self._key("rope.dimension_count", self.head_dim))
        if self.n_rot % 2 or self.n_rot > self.head_dim:
            raise InputError(f"rope.dimension_count {self.n_rot} does not fit head_dim "
                                  f"{self.head_dim}")
        self.eps = float(self._key("attention.layer_norm_rms_epsilon"))
        self.rope_base = float(self._key("rope.freq_base", 10000.0))
        scaling = self._key("rope.scaling.type", "none")
        factor = self._key("rope.scaling.factor", None)
        self.freq_scale = 1.0
        if scaling == "linear" and factor:
            self.freq_scale = 1.0 / float(factor)
        self.rope_neox = arch in ("qwen2", "qwen3", "phi3")
        self.rope_mscale = 1.0
        self.freq_factors = None
        if gguf.has("rope_freqs.weight"):
            self.freq_factors = self._w("rope_freqs.weight")
        if arch == "phi3":
            if gguf.has("rope_factors_short.weight"):
                # The served context stays within phi3.rope.scaling.original_context_length, the
                # range in which llama.cpp uses the short factors.
                self.freq_factors = self._w("rope_factors_short.weight")
            attn_factor = self._key("rope.scaling.attn_factor", None)
            if attn_factor is not None:
                self.rope_mscale = float(attn_factor)
        if self.freq_factors is not None and self.freq_factors.shape != (self.n_rot // 2,):
            raise InputError(f"rope frequency factors have shape "
                                  f"{list(self.freq_factors.shape)}, expected [{self.n_rot // 2}]")
        self.tok_embd = self._w("token_embd.weight")
        if self.tok_embd.ndim != 2 or self.tok_embd.shape[1] != self.n_embd:
            raise InputError(f"token_embd.weight has shape {list(self.tok_embd.shape)}, "
                                  f"expected [n_vocab, {self.n_embd}]")
        self.out_norm = self._w("output_norm.weight")
        self.output = self._w("output.weight") if gguf.has("output.weight") else self.tok_embd
        self.vocab_size = self.output.shape[0]

    def _key(self, suffix, default=KeyError):
        key = f"{self.arch}.{suffix}"
        if key in self.g.meta:
            return self.g.meta[key]
        if default is KeyError:
            raise InputError(f"metadata key {key} missing")
        return default

    def _w(self, name):
        return self.g.tensor(name)

    def _w_shaped(self, name, shape):
        w = self._w(name)
        if w.shape != tuple(shape):
            raise InputError(f"tensor {name} has shape {list(w.shape)} (rows, cols), "
                                  f"expected {list(shape)}")
        return w

    def rope(self, x, positions):
        """x: (T, heads, head_dim); rotates the first n_rot dimensions of every head."""
        half = self.n_rot // 2
        i = np.arange(half, dtype=np.float64)
        inv_freq = self.freq_scale * self.rope_base ** (-2.0 * i / self.n_rot)
        if self.freq_factors is not None:
            inv_freq = inv_freq / self.freq_factors
        theta = positions[:, None].astype(np.float64) * inv_freq[None, :]   # (T, half)
        cos = (np.cos(theta) * self.rope_mscale)[:, None, :]
        sin = (np.sin(theta) * self.rope_mscale)[:, None, :]
        out = x.copy()
        if self.rope_neox:
            x0 = x[:, :, 0:half]
            x1 = x[:, :, half:self.n_rot]
            out[:, :, 0:half] = x0 * cos - x1 * sin
            out[:, :, half:self.n_rot] = x0 * sin + x1 * cos
        else:
            x0 = x[:, :, 0:self.n_rot:2]
            x1 = x[:, :, 1:self.n_rot:2]
            out[:, :, 0:self.n_rot:2] = x0 * cos - x1 * sin
            out[:, :, 1:self.n_rot:2] = x0 * sin + x1 * cos
        return out

    def forward(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        n_vocab_in = self.tok_embd.shape[0]
        bad = [int(t) for t in ids if t < 0 or t >= n_vocab_in]
        if bad:
            raise InputError(f"token id {bad[0]} outside the vocabulary [0, {n_vocab_in})")
        T = len(ids)
        positions = np.arange(T)
        E, H, HKV, D = self.n_embd, self.n_head, self.n_head_kv, self.head_dim
        x = self.tok_embd[ids].copy()
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        group = H // HKV
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = rmsnorm(x, self._w_shaped(p + "attn_norm.weight", (E,)), self.eps)
            if self.arch == "phi3":
                wqkv = self._w_shaped(p + "attn_qkv.weight", ((H + 2 * HKV) * D, E))
                qkv = h @ wqkv.T
                q = qkv[:, :H * D]
                k = qkv[:, H * D:(H + HKV) * D]
                v = qkv[:, (H + HKV) * D:]
            else:
                q = h @ self._w_shaped(p + "attn_q.weight", (H * D, E)).T
                k = h @ self._w_shaped(p + "attn_k.weight", (HKV * D, E)).T
                v = h @ self._w_shaped(p + "attn_v.weight", (HKV * D, E)).T
            if self.arch == "qwen2":
                q = q + self._w_shaped(p + "attn_q.bias", (H * D,))
                k = k + self._w_shaped(p + "attn_k.bias", (HKV * D,))
                v = v + self._w_shaped(p + "attn_v.bias", (HKV * D,))
            q = q.reshape(T, H, D)
            k = k.reshape(T, HKV, D)
            v = v.reshape(T, HKV, D)
            if self.arch == "qwen3":
                q = rmsnorm(q, self._w_shaped(p + "attn_q_norm.weight", (D,)), self.eps)
                k = rmsnorm(k, self._w_shaped(p + "attn_k_norm.weight", (D,)), self.eps)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            kq = np.repeat(k, group, axis=1)      # query head h -> KV head h // group
            vq = np.repeat(v, group, axis=1)
            scores = np.einsum("thd,shd->hts", q, kq) / math.sqrt(D) + mask[None, :, :]
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", probs, vq).reshape(T, H * D)
            x = x + attn @ self._w_shaped(p + "attn_output.weight", (E, H * D)).T

            h = rmsnorm(x, self._w_shaped(p + "ffn_norm.weight", (E,)), self.eps)
            if self.arch == "phi3":
                up2 = self._w(p + "ffn_up.weight")
                if up2.ndim != 2 or up2.shape[1] != E or up2.shape[0] % 2:
                    raise InputError(f"tensor {p}ffn_up.weight has shape "
                                          f"{list(up2.shape)}, expected [2 * n_ff, {E}]")
                gu = h @ up2.T
                n_ff = up2.shape[0] // 2
                gate, up = gu[:, :n_ff], gu[:, n_ff:]
            else:
                wg = self._w(p + "ffn_gate.weight")
                n_ff = wg.shape[0]
                if wg.shape != (n_ff, E):
                    raise InputError(f"tensor {p}ffn_gate.weight has shape {list(wg.shape)}, "
                                     f"expected [n_ff, {E}]")
                gate = h @ wg.T
                up = h @ self._w_shaped(p + "ffn_up.weight", (n_ff, E)).T
            x = x + (silu(gate) * up) @ self._w_shaped(p + "ffn_down.weight", (E, n_ff)).T
        x = rmsnorm(x, self.out_norm, self.eps)
        return x @ self.output.T


# ---------------------------------------------------------------------------------------------
# Command line

def parse_ids(text):
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"--ids: not a list of integers: {text!r}")
    if not ids:
        raise InputError("--ids: no token ids")
    return ids


def json_floats(values):
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def main(argv):
    ap = argparse.ArgumentParser(description="NumPy reference forward pass of a GGUF model.")
    ap.add_argument("model", help="GGUF file")
    ap.add_argument("--ids", help="token ids, separated by spaces or commas (no BOS added)")
    ap.add_argument("--positions-out", action="store_true",
                    help='also print "ids" and "positions" (the position of each logits row)')
    ap.add_argument("--dequant", metavar="NAME", help="print one tensor dequantized, no forward")
    args = ap.parse_args(argv)
    if (args.ids is None) == (args.dequant is None):
        raise InputError("give exactly one of --ids and --dequant")
    gguf = GGUFFile(args.model)
    out = sys.stdout
    if args.dequant is not None:
        name = args.dequant
        t = gguf.tensor(name)
        cols = t.shape[-1] if t.ndim else 1
        rows = t.size // cols if cols else 0
        out.write('{"name":' + json.dumps(name) + ',"type":' + json.dumps(gguf.type_name(name)) +
                  ',"shape":[' + f"{rows},{cols}" + '],"values":' + json_floats(t.reshape(-1)) +
                  "}\n")
        return
    ids = parse_ids(args.ids)
    model = Model(gguf)
    logits = model.forward(ids)
    out.write('{"arch":' + json.dumps(model.arch) + ',"vocab_size":' + str(model.vocab_size))
    if args.positions_out:
        out.write(',"ids":' + json.dumps(ids) + ',"positions":' + json.dumps(list(range(len(ids)))))
    out.write(',"logits":[' + ",".join(json_floats(row) for row in logits) + "]}\n")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (InputError, OSError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
