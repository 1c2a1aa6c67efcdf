${comment}
static void ${fn}(const float *x, float *y)
{
    uint32_t c, oy, ox, iy, ix;
    for (c = 0u; c < ${c}u; ++c) {
        for (oy = 0u; oy < ${oh}u; ++oy) {
            const uint32_t y0 = (oy * ${h}u) / ${oh}u, y1 = ((oy + 1u) * ${h}u + ${oh}u - 1u) / ${oh}u;
            for (ox = 0u; ox < ${ow}u; ++ox) {
                const uint32_t x0 = (ox * ${wd}u) / ${ow}u, x1 = ((ox + 1u) * ${wd}u + ${ow}u - 1u) / ${ow}u;
                float s = 0.0f;
                for (iy = y0; iy < y1; ++iy) {
                    for (ix = x0; ix < x1; ++ix) {
                        s += x[(c * ${h}u + iy) * ${wd}u + ix];
                    }
                }
                y[(c * ${oh}u + oy) * ${ow}u + ox] = s / (float)((y1 - y0) * (x1 - x0));
            }
        }
    }
}
