${comment}
static void ${fn}(const ${t} *x, ${t} *y)
{
    uint32_t i;
    for (i = 0u; i < ${n}u; ++i) {
        y[i] = x[i] > ${zero} ? ${clip} : ${zero};
    }
}
