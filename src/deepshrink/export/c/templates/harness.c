/*
 * harness.c -- runs a deepshrink model.c over test inputs; the same source builds for the host and for a
 * Cortex-M4 under QEMU (tests and benchmarks; not part of an exported library).
 *
 * Host, file mode:      harness IN.bin OUT.bin   IN holds N inputs of DS_INPUT_SIZE ds_input_t, OUT gets N
 *                       outputs of DS_OUTPUT_SIZE ds_output_t; the mean time per input goes to stderr.
 * Embedded (-DDS_EMBEDDED): the inputs are compiled in (ds_images.h: DS_N_IMAGES, ds_images[]); one line per
 *                       input, "i class out..." with every output as the hex of its bytes, so the host and the
 *                       M4 builds print identical text when they compute identical bits.
 */
#if !defined(DS_EMBEDDED)
#define _POSIX_C_SOURCE 199309L
#endif

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

static ds_output_t ds_out[DS_OUTPUT_SIZE];

/* Print one output as the hex of its bytes (most significant first): exact, no float formatting. */
static void ds_print_value(const ds_output_t *v)
{
    unsigned char bytes[sizeof(ds_output_t)];
    uint32_t k;
    memcpy(bytes, v, sizeof bytes);
    for (k = (uint32_t)sizeof bytes; k > 0u; --k) {
        printf("%02x", (unsigned)bytes[k - 1u]);
    }
}

static void ds_print_line(uint32_t i, int cls)
{
    uint32_t k;
    printf("%" PRIu32 " %d", i, cls);
    for (k = 0u; k < DS_OUTPUT_SIZE; ++k) {
        printf(" ");
        ds_print_value(&ds_out[k]);
    }
    printf("\n");
}

#if defined(DS_EMBEDDED)
#include "ds_images.h"

#if defined(__arm__)
#include "ds_startup.h"
#endif

int main(void)
{
    uint32_t i;
    int cls = ds_infer(ds_images[0], ds_out); /* first, so the stack peak is the model's own */
#if defined(__arm__)
    printf("[ds] model stack peak: %" PRIu32 " bytes\n", ds_stack_peak_bytes());
#endif
    ds_print_line(0u, cls);
    for (i = 1u; i < DS_N_IMAGES; ++i) {
        cls = ds_infer(ds_images[i], ds_out);
        ds_print_line(i, cls);
    }
    printf("[ds] done %" PRIu32 "\n", (uint32_t)DS_N_IMAGES);
    return 0;
}

#else
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    FILE *f;
    long size;
    size_t n, i, rep, repeat;
    ds_input_t *inputs;
    ds_output_t *outputs;
    struct timespec t0, t1;
    double seconds;
    if (argc < 3) {
        fprintf(stderr, "usage: %s IN.bin OUT.bin [repeat]\n", argv[0]);
        return 2;
    }
    repeat = argc > 3 ? (size_t)strtoul(argv[3], NULL, 10) : 1u;
    f = fopen(argv[1], "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    n = (size_t)size / (DS_INPUT_SIZE * sizeof(ds_input_t));
    inputs = malloc((n ? n : 1u) * DS_INPUT_SIZE * sizeof(ds_input_t));
    outputs = malloc((n ? n : 1u) * DS_OUTPUT_SIZE * sizeof(ds_output_t));
    if (inputs == NULL || outputs == NULL || fread(inputs, DS_INPUT_SIZE * sizeof(ds_input_t), n, f) != n) {
        fprintf(stderr, "cannot read %zu inputs from %s\n", n, argv[1]);
        return 2;
    }
    fclose(f);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (rep = 0u; rep < (repeat ? repeat : 1u); ++rep) {
        for (i = 0u; i < n; ++i) {
            (void)ds_infer(inputs + i * DS_INPUT_SIZE, outputs + i * DS_OUTPUT_SIZE);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    fprintf(stderr, "ns_per_input %.1f\n", n ? 1e9 * seconds / (double)(n * (repeat ? repeat : 1u)) : 0.0);
    f = fopen(argv[2], "wb");
    if (f == NULL || fwrite(outputs, DS_OUTPUT_SIZE * sizeof(ds_output_t), n, f) != n) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 2;
    }
    fclose(f);
    (void)ds_print_line;
    free(inputs);
    free(outputs);
    return 0;
}
#endif
