/* Shared helpers of the generated kernels; the exporter copies only the sections a model uses. */

/* @helper unpack */
/* Code number i of a stream of `bits`-bit codes packed MSB first (deepshrink.codec.bits.pack_fixed). Every stream
 * ends in two padding bytes, so the 3-byte window never reads past its array. */
static uint32_t ds_unpack(const uint8_t *p, uint32_t i, uint32_t bits)
{
    const uint32_t bit = i * bits;
    const uint8_t *q = p + (bit >> 3);
    const uint32_t window = ((uint32_t)q[0] << 16) | ((uint32_t)q[1] << 8) | (uint32_t)q[2];
    return (window >> (24u - (bit & 7u) - bits)) & ((1u << bits) - 1u);
}

/* @helper round_shift */
/* v * 2^-s rounded half up, s >= 1: deepshrink's rounding_shift, floor((v + 2^(s-1)) / 2^s). Written so that no
 * negative number is shifted right (implementation-defined in C): for t < 0, floor(t / 2^s) = ~(~t >> s). */
static int64_t ds_round_shift(int64_t v, uint32_t s)
{
    const int64_t t = v + ((int64_t)1 << (s - 1u));
    return t >= 0 ? (t >> s) : ~((~t) >> s);
}

/* @helper shift */
/* v * 2^-s for a shift of either sign: rounded half up when s > 0, exact (export proved no overflow) when s <= 0. */
static int64_t ds_shift(int64_t v, int32_t s)
{
    if (s > 0) {
        const int64_t t = v + ((int64_t)1 << (s - 1));
        return t >= 0 ? (t >> s) : ~((~t) >> s);
    }
    return v * ((int64_t)1 << (-s));
}

/* @helper clamp */
/* Saturation to [lo, hi]. */
static int64_t ds_clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}
