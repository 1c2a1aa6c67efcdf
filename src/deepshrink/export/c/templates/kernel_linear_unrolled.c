${comment}
static void ${fn}(const ${xt} *x, ${yt} *y)
{
    uint32_t o, i;
${decl}    for (o = 0u; o < ${rows}u; ++o) {
        ${acct} ${accs};
${row_setup}        for (i = 0u; i < ${main}u; i += ${n}u) { /* ${n} columns per iteration, ${n} independent accumulators */
${lanes}        }
${tail}        acc = ${total};
        y[o] = ${epilogue};
    }
}
