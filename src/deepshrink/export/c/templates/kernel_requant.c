${comment}
static void ${fn}(const ${xt} *x, ${yt} *y)
{
    uint32_t i;
    for (i = 0u; i < ${n}u; ++i) {
        y[i] = (${yt})ds_clamp(${shifted}, ${lo}, ${hi});
    }
}
