${comment}
static void ${fn}(const ${xt} *x, ${yt} *y)
{
    uint32_t o, oy, ox, c, ky, kx;
${decl}    for (o = 0u; o < ${cout}u; ++o) {
        const ${xt} *xg = ${xg};
${row_setup}        for (oy = 0u; oy < ${oh}u; ++oy) {
            for (ox = 0u; ox < ${ow}u; ++ox) {
                ${acct} ${accs};
                for (ky = 0u; ky < ${kh}u; ++ky) {
                    const uint32_t iy = ${iy};
${check_y}                    for (kx = 0u; kx < ${kw}u; ++kx) {
                        const uint32_t ix = ${ix};
${check_x}                        for (c = 0u; c < ${main}u; c += ${n}u) { /* ${n} input channels per iteration */
${lanes}                        }
${tail}                    }
                }
                acc = ${total};
                y[(o * ${oh}u + oy) * ${ow}u + ox] = ${epilogue};
            }
        }
    }
}
