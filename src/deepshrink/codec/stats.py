"""Per-layer statistics of a ``.dsz`` file, in the shape of Deep Compression's Tables 2/3.

Every "+entropy" size is the bytes of the file's own sections (tables included); the "P+Q" columns are the
same symbols at the fixed widths recorded in the header (what ``entropy="raw"`` writes). A context-coded
mask's index bits are given per entry of the fixed-width relative index it replaces.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..core.kinds import StoredWeight, kind_of
from .decode import CompressedFile, read_compressed
from .encode import DEFAULT_INDEX_BITS
from .sparse import encode_positions

__all__ = ["file_stats", "format_table"]


def _bits(nbytes: int, count: int) -> float | None:
    return round(8.0 * nbytes / count, 3) if count else None


def _layer(name: str, header_entry: dict[str, Any], weight: StoredWeight, parts: dict[str, int],
           index_bits: dict[str, Any]) -> dict[str, Any]:
    numel = int(np.prod(header_entry["shape"], dtype=np.int64))
    kind = weight.kind
    kept = weight.kept
    total = sum(parts.values())
    row: dict[str, Any] = {"name": name, "kind": kind, "shape": header_entry["shape"], "layer": header_entry["layer"],
                           "weights": numel, "kept": kept, "kept_pct": round(100.0 * kept / numel, 2) if numel else 0.0,
                           "bytes": total, "fp32_bytes": 4 * numel}
    values = header_entry.get("values", {})
    value_bytes = parts.get("values", 0) + parts.get("values_table", 0)
    if kind_of(kind).symbol_key is None:  # float values stored raw
        width = 16 if header_entry.get("dtype", values.get("dtype")) == "float16" else 32
        row.update(weight_bits_fixed=width, weight_bits=_bits(value_bytes, kept), weight_coding="raw")
    else:
        row.update(weight_bits_fixed=values["raw_bits"], weight_bits=_bits(value_bytes, kept),
                   weight_coding=values["coding"], alphabet=values["alphabet"])
    fixed_bytes = (kept * row["weight_bits_fixed"] + 7) // 8 + parts.get("arrays", 0)
    if "index" in header_entry:
        index = header_entry["index"]
        entries = index["count"]
        row.update(index_bits_fixed=index["bits"], index_coding=index["coding"], index_entries=entries,
                   fillers=entries - kept,
                   index_bits=_bits(parts.get("index", 0) + parts.get("index_table", 0), entries))
        fixed_bytes += (entries * index["bits"] + 7) // 8
    elif "mask" in header_entry:
        # context-modelled mask: its bits are given per entry of the fixed-width relative index it replaces
        stated = index_bits.get(header_entry["layer"])
        bits = int(stated) if isinstance(stated, int) else int(DEFAULT_INDEX_BITS[header_entry["layer"]])
        mask = weight.mask()
        assert mask is not None  # a context-coded mask always has kept positions
        entries = int(encode_positions(mask, bits).size)
        row.update(index_bits_fixed=bits, index_coding="ctx", index_entries=entries, fillers=entries - kept,
                   index_bits=_bits(parts.get("index", 0) + parts.get("index_table", 0), entries))
        fixed_bytes += (entries * bits + 7) // 8
    row["fixed_bytes"] = fixed_bytes
    row["rate_fixed_pct"] = round(100.0 * fixed_bytes / row["fp32_bytes"], 3) if numel else None
    row["rate_pct"] = round(100.0 * total / row["fp32_bytes"], 3) if numel else None
    return row


def file_stats(path: str | os.PathLike[str] | CompressedFile) -> dict[str, Any]:
    """``{"layers": [...], "total": {...}}`` for the file at ``path``, sizes from its sections."""
    cf = path if isinstance(path, CompressedFile) else read_compressed(path)
    stated_bits = cf.header.get("index_bits")
    index_bits: dict[str, Any] = stated_bits if isinstance(stated_bits, dict) else {}
    layers = [_layer(name, cf.header["weights"][name], weight, cf.section_bytes.get(name, {}), index_bits)
              for name, weight in cf.weights.items()]
    other = sum(sum(cf.section_bytes.get(name, {}).values()) for name in cf.tensors)
    weights = sum(r["weights"] for r in layers)
    kept = sum(r["kept"] for r in layers)
    weight_bytes = sum(r["bytes"] for r in layers)
    original = 4 * weights + sum(int(a.size) * 4 if np.issubdtype(a.dtype, np.floating) else a.nbytes for a in cf.tensors.values())
    fixed_total = sum(r["fixed_bytes"] for r in layers) + other + (cf.file_size - weight_bytes - other)

    def avg(key: str, count_key: str) -> float | None:
        rows = [r for r in layers if r.get(key) is not None]
        n = sum(r[count_key] for r in rows)
        return round(sum(r[key] * r[count_key] for r in rows) / n, 3) if n else None

    total = {
        "weights": weights, "kept": kept, "kept_pct": round(100.0 * kept / weights, 2) if weights else 0.0,
        "weight_bits_fixed": avg("weight_bits_fixed", "kept"), "weight_bits": avg("weight_bits", "kept"),
        "index_bits_fixed": avg("index_bits_fixed", "index_entries"), "index_bits": avg("index_bits", "index_entries"),
        "weight_bytes": weight_bytes, "other_bytes": other, "header_bytes": cf.file_size - weight_bytes - other,
        "file_bytes": cf.file_size, "fp32_bytes": original,
        "rate_fixed_pct": round(100.0 * fixed_total / original, 3) if original else None,
        "rate_pct": round(100.0 * cf.file_size / original, 3) if original else None,
        "ratio_fixed": round(original / fixed_total, 2) if fixed_total else None,
        "ratio": round(original / cf.file_size, 2) if cf.file_size else None,
    }
    return {"path": cf.path, "arch": cf.header.get("arch"), "entropy": cf.header.get("entropy"),
            "layers": layers, "total": total}


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(stats: dict[str, Any]) -> str:
    """Tables 2/3 layout: weights, % kept, weight bits P+Q -> +entropy, index bits, bytes, rate."""
    head = (f"{'layer':<24} {'kind':<10} {'weights':>9} {'kept':>7} {'w bits':>12} {'idx bits':>12} "
            f"{'bytes':>9} {'rate P+Q -> +ent':>19}")
    lines = [f"{stats['path']}  (arch {stats['arch']}, entropy {stats['entropy']})", head, "-" * len(head)]
    for r in stats["layers"]:
        wbits = f"{_fmt(r['weight_bits_fixed'], 'g')}->{_fmt(r['weight_bits'])}"
        ibits = f"{_fmt(r.get('index_bits_fixed'), 'g')}->{_fmt(r.get('index_bits'))}" if "index_bits" in r else "-"
        rate = f"{_fmt(r['rate_fixed_pct'], '.2f')}%->{_fmt(r['rate_pct'], '.2f')}%"
        lines.append(f"{r['name']:<24} {r['kind']:<10} {r['weights']:>9,} {r['kept_pct']:>6.1f}% {wbits:>12} "
                     f"{ibits:>12} {r['bytes']:>9,} {rate:>19}")
    t = stats["total"]
    lines.append("-" * len(head))
    wbits = f"{_fmt(t['weight_bits_fixed'], '.3g')}->{_fmt(t['weight_bits'])}"
    ibits = f"{_fmt(t['index_bits_fixed'], '.3g')}->{_fmt(t['index_bits'])}"
    rate = f"{_fmt(t['rate_fixed_pct'], '.2f')}%->{_fmt(t['rate_pct'], '.2f')}%"
    lines.append(f"{'total':<24} {'':<10} {t['weights']:>9,} {t['kept_pct']:>6.1f}% {wbits:>12} {ibits:>12} "
                 f"{t['weight_bytes']:>9,} {rate:>19}")
    lines.append(f"file {t['file_bytes']:,} bytes (weights {t['weight_bytes']:,}, other tensors {t['other_bytes']:,}, "
                 f"header {t['header_bytes']:,}) vs fp32 {t['fp32_bytes']:,}: {_fmt(t['ratio_fixed'], '.1f')}x P+Q, "
                 f"{_fmt(t['ratio'], '.1f')}x stored")
    return "\n".join(lines)
