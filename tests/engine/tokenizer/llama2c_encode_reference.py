#!/usr/bin/python3
"""Plain reference of llama2.c's encode (run.c, encode()) over a llama2.c tokenizer file.

Used at development time to produce the expected ids recorded in tokenizer_test.cc
(KnownEncodingsTok512). Usage: llama2c_encode_reference.py TOKENIZER_FILE VOCAB_SIZE TEXT...
Prints one line per text: the ids, BOS first, separated by spaces.
"""
import struct
import sys


def read_vocab(path, vocab_size):
    data = open(path, 'rb').read()
    off = 4
    pieces, scores = [], []
    for _ in range(vocab_size):
        score, length = struct.unpack_from('<fi', data, off)
        off += 8
        pieces.append(data[off:off + length])
        scores.append(score)
        off += length
    return pieces, scores


def encode(text, pieces, scores):
    # Only normal pieces are matched against text (not <unk>, <s>, </s> or <0xAB>).
    lookup = {}
    for i, p in enumerate(pieces):
        if i < 3 or (len(p) == 6 and p.startswith(b'<0x') and p.endswith(b'>')):
            continue
        lookup.setdefault(p, i)
    ids = [1]
    if not text:
        return ids
    tokens = []  # (id, bytes or None when the token never merges)
    for ch in ' ' + text:
        b = ch.encode('utf-8')
        if b in lookup:
            tokens.append((lookup[b], b))
        else:
            tokens.extend((3 + x, None) for x in b)
    while True:
        best, best_score = None, None
        for i in range(len(tokens) - 1):
            a, c = tokens[i][1], tokens[i + 1][1]
            if a is None or c is None or (a + c) not in lookup:
                continue
            tid = lookup[a + c]
            if best_score is None or scores[tid] > best_score:
                best, best_score = i, scores[tid]
        if best is None:
            break
        merged = tokens[best][1] + tokens[best + 1][1]
        tokens[best:best + 2] = [(lookup[merged], merged)]
    return ids + [t for t, _ in tokens]


def main():
    pieces, scores = read_vocab(sys.argv[1], int(sys.argv[2]))
    for text in sys.argv[3:]:
        print(' '.join(str(i) for i in encode(text, pieces, scores)))


if __name__ == '__main__':
    main()
