${comment}
static void ${fn}(const ${xt} *x, ${yt} *y)
{
    uint32_t e, v = 0u, next = 0u, o = 0u, base = 0u;
    ${acct} acc;
${decl}${row_setup}    acc = ${bias};
    for (e = 0u; e < ${entries}u; ++e) {
        const uint32_t gap = ${gap};
        uint32_t p;
${filler}        p = next + gap; /* the next kept weight */
        next = p + 1u;
        while (p >= base + ${cols}u) { /* rows before p are complete */
            y[o] = ${epilogue};
            ++o;
            base += ${cols}u;
${row_setup_inner}            acc = ${bias};
        }
        acc += ${w} * ${xcast}x[p - base];
        ++v;
    }
    for (;;) { /* rows after the last kept weight */
        y[o] = ${epilogue};
        if (++o == ${rows}u) {
            break;
        }
${row_setup_inner}        acc = ${bias};
    }
}
