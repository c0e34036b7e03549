"""Does a sequential JPEG's entropy-coded data hold exactly the blocks its header declares?

libjpeg conceals damaged data: it warns ("premature end of data segment", "extraneous bytes
before marker", "bad Huffman code") and fills in grey, and Pillow drops those warnings. So a JPEG
with a patched size or bytes zeroed in the middle decodes into an image that looks plausible and
gets scored. This module walks the Huffman-coded data of a sequential (baseline or extended
Huffman, SOF0/SOF1) JPEG the way a decoder does, without the inverse DCT, and reports the same
conditions libjpeg warns about. Progressive, lossless and arithmetic-coded files are not
checked (``None``: nothing found).

It is plain Python: about 0.35 s for 12,288 blocks of pure noise (the worst case), 0.07 s for a
smooth 1024x1024 photo. :func:`entropy_problem` checks files of up to ``max_blocks`` 8x8 blocks
(default 12,288: a 512x512 colour image, or 1024x768 grey or 4:2:0 colour at most) and
leaves larger ones to Pillow's own checks.
"""

from __future__ import annotations

from functools import lru_cache

#: Blocks (8x8, all components) above which the check is skipped for speed.
DEFAULT_MAX_BLOCKS = 12_288

_SOF_SEQUENTIAL = (0xC0, 0xC1)
_SOF_OTHER = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


class _Corrupt(Exception):
    pass


@lru_cache(maxsize=64)
def _lookup(spec: bytes) -> list[int]:
    """A 16-bit peek table for one Huffman table (``spec`` = 16 counts + symbols):
    entry = code length << 8 | symbol, 0 for a bit pattern that starts no code."""
    counts, symbols = spec[:16], spec[16:]
    table = [0] * 65536
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            if k >= len(symbols) or code >= (1 << length):
                raise _Corrupt("a Huffman table is malformed")
            shift = 16 - length
            entry = (length << 8) | symbols[k]
            start = code << shift
            table[start : start + (1 << shift)] = [entry] * (1 << shift)
            code += 1
            k += 1
        code <<= 1
    return table


def _entropy_segment(data: bytes, start: int) -> tuple[list[bytes], int]:
    """The entropy-coded data from ``start``, unstuffed and split at restart markers, and the
    index of the marker that ends it."""
    segments = []
    i = start
    seg_start = start
    n = len(data)
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= n:
            segments.append(data[seg_start:].replace(b"\xff\x00", b"\xff"))
            return segments, n
        nxt = data[j + 1]
        if nxt == 0x00:
            i = j + 2
        elif 0xD0 <= nxt <= 0xD7:
            segments.append(data[seg_start:j].replace(b"\xff\x00", b"\xff"))
            seg_start = i = j + 2
        elif nxt == 0xFF:
            i = j + 1  # fill bytes before a marker
        else:
            segments.append(data[seg_start:j].replace(b"\xff\x00", b"\xff"))
            return segments, j


def _decode_segment(seg: bytes, mcus: int, plan: list[tuple[int, list[int], list[int]]]) -> None:
    """Decode ``mcus`` MCUs from one restart interval; raise _Corrupt on what libjpeg warns about."""
    acc = 0
    nbits = 0
    pos = 0
    n = len(seg)
    padded = 0  # bits of padding (past the data) put into acc
    for _ in range(mcus):
        for blocks, dc, ac in plan:
            for _b in range(blocks):
                k = 0
                table = dc
                while k < 64:
                    while nbits < 32:
                        if pos < n:
                            acc = ((acc << 8) | seg[pos]) & 0xFFFFFFFFFF
                            pos += 1
                        else:
                            acc = ((acc << 8) | 0xFF) & 0xFFFFFFFFFF  # libjpeg pads with ones
                            padded += 8
                        nbits += 8
                    e = table[(acc >> (nbits - 16)) & 0xFFFF]
                    if e == 0:
                        if padded:
                            raise _Corrupt("premature end of data: the file holds fewer blocks than its header declares")
                        raise _Corrupt("corrupt data (a bit pattern that is no Huffman code)")
                    nbits -= e >> 8
                    sym = e & 0xFF
                    if k == 0:
                        size = sym
                        table = ac
                        k = 1
                        if size > 16:
                            raise _Corrupt("corrupt data (a DC difference of impossible size)")
                    else:
                        run, size = sym >> 4, sym & 15
                        if size == 0:
                            if run != 15:
                                break  # end of block
                            k += 16
                            if k > 64:
                                raise _Corrupt("corrupt data (more than 64 coefficients in a block)")
                            continue
                        k += run + 1
                        if k > 64:
                            raise _Corrupt("corrupt data (more than 64 coefficients in a block)")
                    if size:
                        while nbits < size:
                            if pos < n:
                                acc = ((acc << 8) | seg[pos]) & 0xFFFFFFFFFF
                                pos += 1
                            else:
                                acc = ((acc << 8) | 0xFF) & 0xFFFFFFFFFF
                                padded += 8
                            nbits += 8
                        nbits -= size
            if padded - nbits > 0:
                raise _Corrupt("premature end of data: the file holds fewer blocks than its header declares")
    unused = (n - pos) * 8 + nbits - padded
    if unused >= 8:
        raise _Corrupt(f"corrupt data: {unused // 8} bytes left over after the last block its header declares")


def entropy_problem(data: bytes, max_blocks: int = DEFAULT_MAX_BLOCKS) -> str | None:
    """What is wrong with a sequential JPEG's coded data, or None (also for files not checked)."""
    try:
        return _check(data, max_blocks)
    except _Corrupt as exc:
        return str(exc)
    except (IndexError, ValueError, KeyError, ZeroDivisionError):
        return "corrupt JPEG structure"


def _check(data: bytes, max_blocks: int) -> str | None:
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    n = len(data)
    dc_tables: dict[int, list[int]] = {}
    ac_tables: dict[int, list[int]] = {}
    frame = None
    restart = 0
    scanned: dict[int, int] = {}
    while i + 1 < n:
        if data[i] != 0xFF:
            raise _Corrupt("corrupt data between markers")
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        seg = data[i + 4 : i + 2 + length]
        if len(seg) != length - 2:
            raise _Corrupt("premature end of file inside a header segment")
        if marker in _SOF_OTHER:
            return None
        if marker in _SOF_SEQUENTIAL:
            height, width, nc = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
            comps = {seg[6 + 3 * c]: (seg[7 + 3 * c] >> 4, seg[7 + 3 * c] & 15) for c in range(nc)}
            hmax = max(h for h, _ in comps.values())
            vmax = max(v for _, v in comps.values())
            frame = (width, height, comps, hmax, vmax)
            total = sum(-(-(-(-width * h // hmax)) // 8) * -(-(-(-height * v // vmax)) // 8) for h, v in comps.values())
            if total > max_blocks or height == 0:
                return None
        elif marker == 0xC4:
            j = 0
            while j < len(seg):
                tc, th = seg[j] >> 4, seg[j] & 15
                count = sum(seg[j + 1 : j + 17])
                spec = bytes(seg[j + 1 : j + 17 + count])
                (dc_tables if tc == 0 else ac_tables)[th] = _lookup(spec)
                j += 17 + count
        elif marker == 0xDD:
            restart = int.from_bytes(seg[:2], "big")
        elif marker == 0xDA:
            if frame is None:
                raise _Corrupt("scan before the frame header")
            width, height, comps, hmax, vmax = frame
            ns = seg[0]
            members = [(seg[1 + 2 * c], seg[2 + 2 * c] >> 4, seg[2 + 2 * c] & 15) for c in range(ns)]
            if ns == 1:
                cid, td, ta = members[0]
                h, v = comps[cid]
                bw = -(-(-(-width * h // hmax)) // 8)
                bh = -(-(-(-height * v // vmax)) // 8)
                plan = [(1, dc_tables[td], ac_tables[ta])]
                mcus = bw * bh
            else:
                plan = [(comps[cid][0] * comps[cid][1], dc_tables[td], ac_tables[ta]) for cid, td, ta in members]
                mcus = -(-width // (8 * hmax)) * -(-height // (8 * vmax))
            segments, end = _entropy_segment(data, i + 2 + length)
            per = restart or mcus
            expected_segments = -(-mcus // per)
            if len(segments) < expected_segments:
                raise _Corrupt("premature end of data: restart intervals are missing")
            if len(segments) > expected_segments:
                raise _Corrupt("corrupt data: more restart intervals than the header declares")
            for s, part in enumerate(segments):
                _decode_segment(part, min(per, mcus - s * per), plan)
            for cid, _, _ in members:
                scanned[cid] = scanned.get(cid, 0) + 1
            i = end
            continue
        i += 2 + length
    if frame is not None and set(scanned) != set(frame[2]):
        raise _Corrupt("premature end of data: a colour component has no scan")
    return None
