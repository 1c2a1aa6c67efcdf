${comment}
static void ${fn}(const ${t} *x, ${t} *y)
{
    uint32_t c, oy, ox, ky, kx;
    for (c = 0u; c < ${c}u; ++c) {
        for (oy = 0u; oy < ${oh}u; ++oy) {
            for (ox = 0u; ox < ${ow}u; ++ox) {
                ${t} m = ${lowest};
                for (ky = 0u; ky < ${kh}u; ++ky) {
                    const uint32_t iy = ${iy};
${check_y}                    for (kx = 0u; kx < ${kw}u; ++kx) {
                        const uint32_t ix = ${ix};
                        ${t} v;
${check_x}                        v = x[(c * ${h}u + ${iy_in}) * ${wd}u + ${ix_in}];
                        if (v > m) {
                            m = v;
                        }
                    }
                }
                y[(c * ${oh}u + oy) * ${ow}u + ox] = m;
            }
        }
    }
}
