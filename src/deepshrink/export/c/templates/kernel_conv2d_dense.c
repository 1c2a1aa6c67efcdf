${comment}
static void ${fn}(const ${xt} *x, ${yt} *y)
{
    uint32_t o, oy, ox, c, ky, kx;
${decl}    for (o = 0u; o < ${cout}u; ++o) {
        const ${xt} *xg = ${xg};
${row_setup}        for (oy = 0u; oy < ${oh}u; ++oy) {
            for (ox = 0u; ox < ${ow}u; ++ox) {
                ${acct} acc = ${bias};
                for (c = 0u; c < ${cg}u; ++c) {
                    for (ky = 0u; ky < ${kh}u; ++ky) {
                        const uint32_t iy = ${iy};
${check_y}                        for (kx = 0u; kx < ${kw}u; ++kx) {
                            const uint32_t ix = ${ix};
${check_x}                            acc += ${w} * ${xcast}xg[(c * ${h}u + ${iy_in}) * ${wd}u + ${ix_in}];
                        }
                    }
                }
                y[(o * ${oh}u + oy) * ${ow}u + ox] = ${epilogue};
            }
        }
    }
}
