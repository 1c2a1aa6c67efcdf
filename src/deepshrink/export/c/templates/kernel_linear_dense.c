${comment}
static void ${fn}(const ${xt} *x, ${yt} *y)
{
    uint32_t o, i;
${decl}    for (o = 0u; o < ${rows}u; ++o) {
        ${acct} acc = ${bias};
${row_setup}        for (i = 0u; i < ${cols}u; ++i) {
            acc += ${w} * ${xcast}x[i];
        }
        y[o] = ${epilogue};
    }
}
