${comment}
static void ${fn}(const float *x, float *y)
{
    uint32_t c, oy, ox, ky, kx;
    for (c = 0u; c < ${c}u; ++c) {
        for (oy = 0u; oy < ${oh}u; ++oy) {
            for (ox = 0u; ox < ${ow}u; ++ox) {
                float s = 0.0f;
                for (ky = 0u; ky < ${kh}u; ++ky) {
                    const uint32_t iy = ${iy};
${check_y}                    for (kx = 0u; kx < ${kw}u; ++kx) {
                        const uint32_t ix = ${ix};
${check_x}                        s += x[(c * ${h}u + ${iy_in}) * ${wd}u + ${ix_in}];
                    }
                }
                y[(c * ${oh}u + oy) * ${ow}u + ox] = s / ${count}f;
            }
        }
    }
}
