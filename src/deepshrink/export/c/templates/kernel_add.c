${comment}
static void ${fn}(const ${at} *a, const ${bt} *b, ${yt} *y)
{
    uint32_t i;
    for (i = 0u; i < ${n}u; ++i) {
        y[i] = ${sum};
    }
}
