${comment}
static void ${fn}(const float *x, float *y)
{
    uint32_t c, i;
    for (c = 0u; c < ${c}u; ++c) {
        for (i = 0u; i < ${inner}u; ++i) {
            y[c * ${inner}u + i] = x[c * ${inner}u + i] * ${scale}[c] + ${shift}[c];
        }
    }
}
