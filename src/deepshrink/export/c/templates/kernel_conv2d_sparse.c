${comment}
static void ${fn}(const ${xt} *x, ${yt} *y, ${acct} *acc)
{
    uint32_t e, v = 0u, next = 0u, o = 0u, base = 0u, i;
    const ${xt} *xg = x;
${decl}${row_setup}    for (i = 0u; i < ${ohw}u; ++i) {
        acc[i] = ${bias};
    }
    for (e = 0u; e < ${entries}u; ++e) {
        const uint32_t gap = ${gap};
        uint32_t p, r, c, ky, kx, oy, ox;
        ${acct} w;
${filler}        p = next + gap; /* the next kept weight */
        next = p + 1u;
        while (p >= base + ${r}u) { /* output channels before p are complete */
            for (i = 0u; i < ${ohw}u; ++i) {
                y[o * ${ohw}u + i] = ${epilogue};
            }
            ++o;
            base += ${r}u;
            xg = ${xg};
${row_setup_inner}            for (i = 0u; i < ${ohw}u; ++i) {
                acc[i] = ${bias};
            }
        }
        r = p - base; /* (c, ky, kx) of the kept weight in its output channel */
        c = r / ${khkw}u;
        ky = (r / ${kw}u) % ${kh}u;
        kx = r % ${kw}u;
        w = ${w};
        ++v;
        /* add w * input to every output whose receptive field holds this tap inside the input */
        for (oy = ${oy0}; oy < ${oy1}; ++oy) {
            const ${xt} *xr = xg + (c * ${h}u + ${iy_in}) * ${wd}u;
            ${acct} *ar = acc + oy * ${ow}u;
            for (ox = ${ox0}; ox < ${ox1}; ++ox) {
                ar[ox] += w * ${xcast}xr[${ix_in}];
            }
        }
    }
    for (;;) { /* output channels after the last kept weight */
        for (i = 0u; i < ${ohw}u; ++i) {
            y[o * ${ohw}u + i] = ${epilogue};
        }
        if (++o == ${cout}u) {
            break;
        }
        xg = ${xg};
${row_setup_inner}        for (i = 0u; i < ${ohw}u; ++i) {
            acc[i] = ${bias};
        }
    }
}
