"""Write ``model.h`` and ``model.c`` from a :class:`~.plan.Plan`: weight arrays, one kernel per op, ``ds_infer``.

Kernels are the templates in ``templates/kernel_*.c`` rendered per op with its constants (shapes, strides,
shifts, array names), so the compiler sees every bound and the code checks nothing export already proved; only
the helpers a model uses are copied (an unused ``static`` function would warn).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

import numpy as np

from ... import __version__
from .plan import Op, Plan, Value
from .unroll import fields as unrolled
from .weights import CArray, EncodedWeight, code_expr

TEMPLATES = "deepshrink.export.c"


@functools.cache
def template(name: str) -> str:
    """The text of ``templates/<name>``."""
    return resources.files(TEMPLATES).joinpath("templates", name).read_text()


@functools.cache
def _helpers() -> dict[str, str]:
    text = template("kernel_helpers.c")
    parts = re.split(r"/\* @helper (\w+) \*/\n", text)
    return {parts[i]: parts[i + 1].strip() + "\n" for i in range(1, len(parts), 2)}


# ---- C literals ------------------------------------------------------------------------------------------------


def c_float(v: float) -> str:
    """A float32 as a C literal that reads back to the same float (9 significant digits)."""
    text = f"{float(np.float32(v)):.9g}"
    if not any(ch in text for ch in ".en"):
        text += ".0"
    return text + "f"


def c_int(v: int, ctype: str = "int32_t") -> str:
    """An integer literal of ``ctype`` (the most negative values written as an expression, as C requires)."""
    v = int(v)
    if ctype == "int64_t":
        return "(INT64_C(-9223372036854775807) - 1)" if v == -(1 << 63) else f"INT64_C({v})"
    if ctype == "int32_t" and v == -(1 << 31):
        return "(-2147483647 - 1)"
    return str(v)


def _literals(array: CArray) -> list[str]:
    if array.ctype == "float":
        return [c_float(v) for v in array.values.tolist()]
    if array.ctype.startswith("uint"):
        return [f"0x{int(v):02x}" for v in array.values.tolist()]
    return [c_int(v, array.ctype) for v in array.values.tolist()]


def render_array(array: CArray) -> str:
    per_line = {"float": 6, "uint8_t": 16}.get(array.ctype, 12)
    items = _literals(array) or ["0"]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    note = f" /* {array.comment} */" if array.comment else ""
    return f"static const {array.ctype} {array.name}[{max(array.values.size, 1)}] ={note}\n{{\n    {body}\n}};\n"


# ---- per-op rendering ------------------------------------------------------------------------------------------


@dataclass
class Rendered:
    """One op in C: its function, the helpers and arrays it needs, and the call in ``ds_infer``."""

    function: str
    helpers: tuple[str, ...]
    arrays: list[CArray]
    args: list[str]  # "in"/"out"/"scratch" markers resolved by the caller: values, then scratch


def _u(v: int) -> str:
    return f"{int(v)}u"


def _epilogue(op: Op, acc: str, row: str, cname: str) -> tuple[str, list[CArray], tuple[str, ...]]:
    """The output expression of a layer from accumulator ``acc``: float as is; integer shifted, saturated."""
    yt = op.output.ctype
    a = op.attrs
    if op.output.frac is None:
        return acc, [], ()
    if "shift" in a:
        shifts = np.asarray(a["shift"], dtype=np.int64)
        lo, hi = c_int(a["lo"], "int64_t"), c_int(a["hi"], "int64_t")
        if np.all(shifts == shifts[0]):
            s = int(shifts[0])
            if s > 0:
                return f"({yt})ds_clamp(ds_round_shift({acc}, {s}u), {lo}, {hi})", [], ("round_shift", "clamp")
            if s == 0:
                return f"({yt})ds_clamp({acc}, {lo}, {hi})", [], ("clamp",)
            return f"({yt})ds_clamp((int64_t){acc} * {c_int(1 << -s, 'int64_t')}, {lo}, {hi})", [], ("clamp",)
        table = CArray(f"{cname}_shift", "int8_t", shifts, "output shift per channel (accumulator -> output format)")
        if np.all(shifts > 0):
            expr = f"ds_round_shift({acc}, (uint32_t){cname}_shift[{row}])"
            return f"({yt})ds_clamp({expr}, {lo}, {hi})", [table], ("round_shift", "clamp")
        return f"({yt})ds_clamp(ds_shift({acc}, {cname}_shift[{row}]), {lo}, {hi})", [table], ("shift", "clamp")
    align = np.asarray(a["align"], dtype=np.int64)
    if np.all(align == 0):
        return (acc if yt == a["acc_ctype"] else f"({yt}){acc}"), [], ()
    if np.all(align == align[0]):
        return f"({yt})((int64_t){acc} * {c_int(1 << int(align[0]), 'int64_t')})", [], ()
    table = CArray(f"{cname}_align", "int8_t", align, "left shift per channel to the common output format")
    return f"({yt})((int64_t){acc} * ((int64_t)1 << {cname}_align[{row}]))", [table], ()


def _cast(ctype: str, acct: str) -> str:
    """The cast that widens a ``ctype`` operand to the accumulator's type (none when they agree)."""
    return "" if ctype == acct else f"({acct})"


def _term(var: str, k: int) -> str:
    return var if k == 1 else f"{var} * {_u(k)}"


def _bias(enc: EncodedWeight | None, acct: str, row: str) -> str:
    if enc is None:
        return "0.0f" if acct == "float" else "0"
    return f"{_cast(enc.elem, acct)}{enc.value(row)}"


def _comment(op: Op, extra: list[str]) -> str:
    inputs = ", ".join(v.describe() for v in op.inputs)
    lines = [f"{op.name}: {op.kind}, {inputs} -> {op.output.describe()}", *extra]
    return "/* " + "\n * ".join(lines) + " */"


def _weight_parts(op: Op) -> dict[str, str]:
    assert op.layer is not None
    enc = op.layer.encoded
    return {"decl": enc.decl(), "row_setup": enc.row_setup("o"), "row_setup_inner": enc.row_setup("o", " " * 12)}


def _filler(enc: EncodedWeight, indent: str = "        ") -> str:
    if not enc.fillers:
        return ""
    return (f"{indent}if (gap == {enc.filler}u) {{ /* filler: no weight, {enc.filler} positions on */\n"
            f"{indent}    next += {enc.filler}u;\n{indent}    continue;\n{indent}}}\n")


def _layer(op: Op, unroll: int = 1) -> Rendered:
    """A Linear or Conv layer; ``unroll`` > 1: its dense dot product that many elements per iteration."""
    assert op.layer is not None
    layer, a = op.layer, op.attrs
    enc, cname, acct = layer.encoded, layer.cname, a["acc_ctype"]
    xt, yt = op.inputs[0].ctype, op.output.ctype
    helpers = ["unpack"] if enc.needs_unpack or (layer.bias is not None and layer.bias.needs_unpack) else []
    arrays = list(enc.arrays) + (list(layer.bias.arrays) if layer.bias is not None else [])
    sparse = enc.layout == "sparse"
    info = [f"weight: {enc.describe()}"]
    if layer.bias is not None:
        info.append(f"bias: {layer.bias.describe()}")
    if op.output.frac is not None:
        info.append(f"accumulator {acct}, integers only")
    fields: dict[str, Any] = {"fn": f"ds_{cname}", "xt": xt, "yt": yt, "acct": acct, **_weight_parts(op),
                              "bias": _bias(layer.bias, acct, "o"), "xcast": _cast(xt, acct)}
    wcast = _cast(enc.elem, acct)
    if op.kind == "linear":
        epi, extra, more = _epilogue(op, "acc", "o", cname)
        index = "v" if sparse else f"o * {_u(a['in'])} + i"
        fields.update(rows=a["out"], cols=a["in"], w=f"{wcast}{enc.value(index)}", epilogue=epi,
                      entries=enc.entries, gaps=f"{enc.name}_gaps", gap_bits=enc.gap_bits, filler=_filler(enc),
                      gap=code_expr(f"{enc.name}_gaps", "e", enc.gap_bits))
        name = "kernel_linear_sparse.c" if sparse else "kernel_linear_dense.c"
        if not sparse and 1 < unroll <= a["in"]:
            width, xcast = _u(a["in"]), fields["xcast"]
            fields.update(unrolled(unroll, a["in"], "i", acct, fields["bias"],
                                   lambda i: f"{wcast}{enc.value(f'o * {width} + {i}')} * {xcast}x[{i}]", " " * 8))
            info.append(f"inner loop unrolled by {unroll} ({unroll} accumulators)")
            name = "kernel_linear_unrolled.c"
        return Rendered(_render(name, op, info, fields), (*helpers, *more), arrays + extra, ["x", "y"])
    cin, h, w = a["in_shape"]
    cout, oh, ow = a["out_shape"]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups = a["kernel"], a["stride"], a["padding"], a["dilation"], a["groups"]
    cg, og = cin // groups, cout // groups
    xg = "x" if groups == 1 else f"x + (o / {_u(og)}) * {_u(cg * h * w)}"
    fields.update(cout=cout, oh=oh, ow=ow, cg=cg, kh=kh, kw=kw, h=h, wd=w, xg=xg)
    if not sparse:
        epi, extra, more = _epilogue(op, "acc", "o", cname)
        widx = f"(({_term('o', cg)} + c) * {_u(kh)} + ky) * {_u(kw)} + kx"
        fields.update(w=f"{wcast}{enc.value(widx)}", epilogue=epi, **_window("iy", "oy", sh, dh, ph, h, False),
                      **_window("ix", "ox", sw, dw, pw, w, False, indent=" " * 28))
        name = "kernel_conv2d_dense.c"
        if 1 < unroll <= cg:
            fields.update(**_window("iy", "oy", sh, dh, ph, h, False, indent=" " * 20),
                          **_window("ix", "ox", sw, dw, pw, w, False))  # the channel loop moved in: one level less
            fields.update(unrolled(unroll, cg, "c", acct, fields["bias"], _conv_term(fields, wcast, cg, kh, kw, enc),
                                   " " * 24))
            info.append(f"input-channel loop unrolled by {unroll} ({unroll} accumulators)")
            name = "kernel_conv2d_unrolled.c"
        return Rendered(_render(name, op, info, fields), (*helpers, *more), arrays + extra, ["x", "y"])
    epi, extra, more = _epilogue(op, "acc[i]", "o", cname)
    tables = ""
    if ph:
        rows = [_tap_range(ky * dh, ph, sh, h, oh) for ky in range(kh)]
        tables += _range_table(f"{cname}_oy", rows)
        fields.update(oy0=f"{cname}_oy[ky][0]", oy1=f"{cname}_oy[ky][1]",
                      iy_in=f"{_term('oy', sh)} + {_term('ky', dh)} - {_u(ph)}")
    else:
        fields.update(oy0="0u", oy1=_u(oh), iy_in=f"{_term('oy', sh)} + {_term('ky', dh)}")
    if pw:
        cols = [_tap_range(kx * dw, pw, sw, w, ow) for kx in range(kw)]
        tables += _range_table(f"{cname}_ox", cols)
        fields.update(ox0=f"{cname}_ox[kx][0]", ox1=f"{cname}_ox[kx][1]",
                      ix_in=f"{_term('ox', sw)} + {_term('kx', dw)} - {_u(pw)}")
    else:
        fields.update(ox0="0u", ox1=_u(ow), ix_in=f"{_term('ox', sw)} + {_term('kx', dw)}")
    fields.update(decl=tables + fields["decl"], ohw=oh * ow, r=cg * kh * kw, khkw=kh * kw, entries=enc.entries,
                  gaps=f"{enc.name}_gaps", gap_bits=enc.gap_bits, filler=_filler(enc), w=f"{wcast}{enc.value('v')}",
                  gap=code_expr(f"{enc.name}_gaps", "e", enc.gap_bits),
                  epilogue=epi, bias=_bias(layer.bias, acct, "o"))
    return Rendered(_render("kernel_conv2d_sparse.c", op, info, fields), (*helpers, *more), arrays + extra,
                    ["x", "y", "scratch"])


def _conv_term(fields: dict[str, Any], wcast: str, cg: int, kh: int, kw: int,
               enc: EncodedWeight) -> Callable[[str], str]:
    """A dense conv's product at input channel ``c`` (a C expression) of the tap ``(ky, kx)``."""

    def term(c: str) -> str:
        widx = f"(({_term('o', cg)} + {c}) * {_u(kh)} + ky) * {_u(kw)} + kx"
        ch = c if c.isidentifier() else f"({c})"
        xidx = f"({ch} * {fields['h']}u + {fields['iy_in']}) * {fields['wd']}u + {fields['ix_in']}"
        return f"{wcast}{enc.value(widx)} * {fields['xcast']}xg[{xidx}]"

    return term


def _tap_range(tap: int, pad: int, stride: int, size: int, out: int) -> tuple[int, int]:
    """Outputs ``[first, end)`` whose input coordinate ``o * stride + tap - pad`` lies inside ``[0, size)``."""
    inside = [o for o in range(out) if 0 <= o * stride + tap - pad < size]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def _range_table(name: str, ranges: list[tuple[int, int]]) -> str:
    body = ", ".join(f"{{{a}u, {b}u}}" for a, b in ranges)
    return f"    static const uint16_t {name}[{len(ranges)}][2] = {{{body}}}; /* outputs [first, end) per tap */\n"


def _window(var: str, out: str, stride: int, dilation: int, pad: int, size: int, ceil: bool,
            indent: str = " " * 24) -> dict[str, str]:
    """The input coordinate of a window tap and the bound checks padding (or a ceil-mode pool) needs."""
    tap = "ky" if var == "iy" else "kx"
    checks = []
    if pad:
        checks.append(f"{var} < {_u(pad)}")
    if pad or ceil:
        checks.append(f"{var} >= {_u(size + pad)}")
    check = f"{indent}if ({' || '.join(checks)}) {{\n{indent}    continue;\n{indent}}}\n" if checks else ""
    key = "y" if var == "iy" else "x"
    return {var: f"{_term(out, stride)} + {_term(tap, dilation)}", f"check_{key}": check,
            f"{var}_in": f"{var} - {_u(pad)}" if pad else var}


def _render(name: str, op: Op, info: list[str], fields: dict[str, Any]) -> str:
    fields = {k: (str(v) if not isinstance(v, str) else v) for k, v in fields.items()}
    return Template(template(name)).substitute(comment=_comment(op, info), **fields)


def _lowest(ctype: str) -> str:
    if ctype == "float":
        return "-3.40282347e+38f"
    if ctype.startswith("u"):
        return "0"
    bits = {"int8_t": 8, "int16_t": 16, "int32_t": 32, "int64_t": 64}[ctype]
    return c_int(-(1 << (bits - 1)), ctype)


def _pool(op: Op) -> Rendered:
    a = op.attrs
    c, h, w = a["in_shape"]
    _, oh, ow = a["out_shape"]
    fn = f"ds_{op.attrs['cname']}"
    if op.kind == "adaptive_avgpool2d":
        fields: dict[str, Any] = {"fn": fn, "c": c, "h": h, "wd": w, "oh": oh, "ow": ow}
        return Rendered(_render("kernel_adaptive_avgpool2d.c", op, [], fields), (), [], ["x", "y"])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = a["kernel"], a["stride"], a["padding"], a["dilation"]
    ceil = a["ceil_mode"]
    fields = {"fn": fn, "t": op.output.ctype, "c": c, "h": h, "wd": w, "oh": oh, "ow": ow, "kh": kh, "kw": kw,
              "lowest": _lowest(op.output.ctype), "count": kh * kw,
              **_window("iy", "oy", sh, dh, ph, h, ceil, indent=" " * 20),
              **_window("ix", "ox", sw, dw, pw, w, ceil, indent=" " * 24)}
    if op.kind == "avgpool2d":
        fields["count"] = f"{kh * kw}.0"
    info = [f"kernel {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw}" + (", in place" if op.inplace else "")]
    name = "kernel_maxpool2d.c" if op.kind == "maxpool2d" else "kernel_avgpool2d.c"
    return Rendered(_render(name, op, info, fields), (), [], ["x", "y"])


def _relu(op: Op) -> Rendered:
    t = op.output.ctype
    zero = "0.0f" if t == "float" else "0"
    clip = "x[i]"
    if op.kind == "relu6":
        six = "6.0f" if t == "float" else c_int(op.attrs["six"], t)
        clip = f"(x[i] < {six} ? x[i] : {six})"
    fields = {"fn": f"ds_{op.attrs['cname']}", "t": t, "n": op.output.numel, "zero": zero, "clip": clip}
    return Rendered(_render("kernel_relu.c", op, [], fields), (), [], ["x", "y"])


def _add(op: Op) -> Rendered:
    a, b = op.inputs
    yt = op.output.ctype
    if yt == "float":
        total = "a[i] + b[i]"
    else:
        sa, sb = op.attrs["scale_a"], op.attrs["scale_b"]
        wide = "int64_t" if yt == "int64_t" else "int32_t"
        terms = [f"({wide})a[i]" + (f" * {sa}" if sa != 1 else ""), f"({wide})b[i]" + (f" * {sb}" if sb != 1 else "")]
        total = f"({yt})({' + '.join(terms)})"
    info = [] if yt == "float" else [f"both at Q.{op.output.frac}; exact, as the engine's float32 sum"]
    fields = {"fn": f"ds_{op.attrs['cname']}", "at": a.ctype, "bt": b.ctype, "yt": yt, "n": op.output.numel,
              "sum": total}
    return Rendered(_render("kernel_add.c", op, info, fields), (), [], ["a", "b", "y"])


def _requant(op: Op) -> Rendered:
    s = int(op.attrs["shift"])
    helpers: tuple[str, ...]
    if s > 0:
        shifted, helpers = f"ds_round_shift(x[i], {s}u)", ("round_shift", "clamp")
    elif s == 0:
        shifted, helpers = "x[i]", ("clamp",)
    else:
        shifted, helpers = f"(int64_t)x[i] * {c_int(1 << -s, 'int64_t')}", ("clamp",)
    fields = {"fn": f"ds_{op.attrs['cname']}", "xt": op.inputs[0].ctype, "yt": op.output.ctype,
              "n": op.output.numel, "shifted": shifted, "lo": c_int(op.attrs["lo"], "int64_t"),
              "hi": c_int(op.attrs["hi"], "int64_t")}
    info = ["to the next layer's input format: round half up, saturate"]
    return Rendered(_render("kernel_requant.c", op, info, fields), helpers, [], ["x", "y"])


def _affine(op: Op) -> Rendered:
    cname = op.attrs["cname"]
    arrays = [CArray(f"{cname}_scale", "float", np.asarray(op.attrs["scale"], np.float32), "BatchNorm scale"),
              CArray(f"{cname}_shift", "float", np.asarray(op.attrs["shift"], np.float32), "BatchNorm shift")]
    fields = {"fn": f"ds_{cname}", "c": op.attrs["channels"], "inner": op.attrs["inner"], "scale": arrays[0].name,
              "shift": arrays[1].name}
    return Rendered(_render("kernel_affine.c", op, ["a BatchNorm that could not fold"], fields), (), arrays, ["x", "y"])


def _copy(op: Op) -> Rendered:
    fields = {"fn": f"ds_{op.attrs['cname']}", "t": op.output.ctype, "n": op.output.numel}
    return Rendered(_render("kernel_copy.c", op, [], fields), (), [], ["x", "y"])


RENDERERS: dict[str, Callable[[Op], Rendered]] = {
    "linear": _layer, "conv2d": _layer, "maxpool2d": _pool, "avgpool2d": _pool, "adaptive_avgpool2d": _pool,
    "relu": _relu, "relu6": _relu, "add": _add, "requant": _requant, "affine": _affine, "copy": _copy,
}
"""Op kind -> its C rendering."""


# ---- the files -------------------------------------------------------------------------------------------------


def _pointer(value: Value, const: bool) -> str:
    st = value.storage
    assert st is not None
    if st.place == "input":
        return "in"
    if st.place == "output":
        return "out"
    qual = "const " if const else ""
    return f"({qual}{value.ctype} *)(ds_arena.bytes + {st.offset})"


def _argmax(ctype: str) -> str:
    return (f"/* Index of the largest output (the first one on ties): the predicted class. */\n"
            f"static int ds_argmax(const {ctype} *v, uint32_t n)\n{{\n    uint32_t i, best = 0u;\n"
            f"    for (i = 1u; i < n; ++i) {{\n        if (v[i] > v[best]) {{\n            best = i;\n        }}\n"
            f"    }}\n    return (int)best;\n}}\n")


@dataclass
class Emitted:
    """The two files' text and the figures the exporter reports."""

    header: str
    source: str
    weight_bytes: int
    arrays: list[CArray]
    layers: list[dict[str, Any]]


def emit(plan: Plan, source: str = "", unroll: int = 1) -> Emitted:
    """Render ``plan`` as ``model.h`` and ``model.c``; ``unroll``: elements per iteration of the dense dot
    products (:mod:`.unroll`; 1, the default, is the plain loop)."""
    names: set[str] = set()
    for op in plan.ops:
        if op.layer is None and op.kind != "alias":
            op.attrs["cname"] = _unique(op.name, names)
        elif op.layer is not None:
            names.add(op.layer.cname)
    rendered = [(op, _layer(op, unroll) if op.layer is not None else RENDERERS[op.kind](op)) for op in plan.ops
                if op.kind != "alias"]
    helpers: list[str] = []
    arrays: list[CArray] = []
    for _, r in rendered:
        helpers += [h for h in r.helpers if h not in helpers]
        arrays += r.arrays
    order = [h for h in _helpers() if h in helpers]
    weight_bytes = sum(a.nbytes for a in arrays)
    in_t, out_t = plan.input.ctype, plan.output.ctype
    calls = []
    for op, r in rendered:
        values = {"x": op.inputs[0], "a": op.inputs[0], "b": op.inputs[-1], "y": op.output}
        args = []
        for key in r.args:
            if key == "scratch":
                assert op.scratch is not None
                args.append(f"({op.attrs['acc_ctype']} *)(ds_arena.bytes + {op.scratch.offset})")
            else:
                args.append(_pointer(values[key], key != "y"))
        fn = f"ds_{op.layer.cname if op.layer is not None else op.attrs['cname']}"
        calls.append(f"    {fn}({', '.join(args)});")
    mode = "integer-only (dynamic fixed point)" if plan.integer else "float32"
    layers = [{"name": op.name, "kind": op.kind, "weight": op.layer.encoded.describe(),
               "weight_bytes": op.layer.encoded.nbytes + (op.layer.bias.nbytes if op.layer.bias else 0)}
              for op in plan.ops if op.layer is not None]
    summary = "\n".join(f" *   {x['name']}: {x['weight']}" for x in layers)
    arena = max(plan.arena_bytes, 8)
    src = [
        f"/* model.c -- {plan.model_name} as C99, {mode}; generated by deepshrink {__version__}"
        + (f" from {source}" if source else "") + ".",
        " * Weights stay in their compressed form (const arrays, i.e. flash on a microcontroller):",
        summary,
        f" * Activations live in one static arena of {plan.arena_bytes} bytes (buffers reused across ops); no malloc,",
        " * no run-time checks: every shape is a constant proven at export. */",
        '#include "model.h"', "",
        "/* ---- weights ---- */", *[render_array(a) for a in arrays],
        "/* ---- activation arena ---- */",
        f"static union {{\n    int64_t align; /* 8-byte alignment for every element type */\n"
        f"    uint8_t bytes[{arena}];\n}} ds_arena;\n",
        "/* ---- helpers ---- */", *[_helpers()[h] for h in order], _argmax(out_t),
        "/* ---- kernels, one per op ---- */", *[r.function for _, r in rendered],
        "/* ---- the entry point ---- */",
        f"int ds_infer(const {in_t} *in, {out_t} *out)\n{{",
        *calls,
        f"    return ds_argmax(out, {_u(plan.output.numel)});\n}}\n",
    ]
    return Emitted(_header(plan, weight_bytes, source), "\n".join(src), weight_bytes, arrays, layers)


def _unique(name: str, taken: set[str]) -> str:
    base = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "op"
    out, n = base, 1
    while out in taken:
        n += 1
        out = f"{base}_{n}"
    taken.add(out)
    return out


def _header(plan: Plan, weight_bytes: int, source: str) -> str:
    i, o = plan.input, plan.output
    lines = [
        f"/* model.h -- {plan.model_name}, generated by deepshrink {__version__}" + (f" from {source}" if source else "")
        + "; do not edit.",
        " * int ds_infer(in, out): one sample in, the outputs out; returns the index of the largest output. */",
        "#ifndef DS_MODEL_H", "#define DS_MODEL_H", "", "#include <stdint.h>", "",
        f"#define DS_INPUT_SIZE {_u(i.numel)} /* elements of one input, shape {'x'.join(map(str, i.shape))} (C order) */",
        f"#define DS_INPUT_RANK {len(i.shape)}",
        *[f"#define DS_INPUT_DIM{k} {d}" for k, d in enumerate(i.shape)],
        f"#define DS_OUTPUT_SIZE {_u(o.numel)}",
        f"#define DS_ARENA_BYTES {plan.arena_bytes} /* static activation memory */",
        f"#define DS_WEIGHT_BYTES {weight_bytes} /* const weight arrays */",
    ]
    if plan.integer:
        assert i.frac is not None and o.frac is not None
        bits = {"int8_t": 8, "uint8_t": 8, "int16_t": 16, "uint16_t": 16}.get(i.ctype, 32)
        lines += [
            "#define DS_INTEGER_ONLY 1",
            f"#define DS_INPUT_FRAC_LEN {i.frac} /* value = in[k] * 2^-{i.frac}: in[k] = clamp(floor(x * 2^{i.frac} + 0.5)) */",
            f"#define DS_INPUT_MIN ({i.lo})", f"#define DS_INPUT_MAX {i.hi}", f"#define DS_INPUT_BITS {bits}",
            f"#define DS_OUTPUT_FRAC_LEN {o.frac} /* value = out[k] * 2^-{o.frac} */",
        ]
    else:
        lines.append("#define DS_INTEGER_ONLY 0")
    lines += ["", f"typedef {i.ctype} ds_input_t;", f"typedef {o.ctype} ds_output_t;", "",
              f"int ds_infer(const {i.ctype} *in, {o.ctype} *out);", "", "#endif /* DS_MODEL_H */", ""]
    return "\n".join(lines)
