/*
 * fit_main.c -- the smallest program around a deepshrink model: one inference on a zero input. Linked against a
 * part's memory map, it measures what the model needs (flash: code + weights; RAM: arena + input + output +
 * stack); the link succeeding is the proof that it fits.
 */
#include "model.h"

static ds_input_t ds_in[DS_INPUT_SIZE];
static ds_output_t ds_out[DS_OUTPUT_SIZE];

int main(void)
{
    return ds_infer(ds_in, ds_out);
}
