/*
 * ds_startup.h -- helpers exported by startup_cm4.c (bare-metal builds only).
 */
#ifndef DS_STARTUP_H
#define DS_STARTUP_H

#include <stdint.h>

/* Size of the stack region reserved by cortex_m4.ld.in (__ds_stack_size). */
uint32_t ds_stack_size_bytes(void);
/* Deepest stack use so far: scans the painted region from the bottom. */
uint32_t ds_stack_peak_bytes(void);
/* Raw semihosting console write (SYS_WRITE0), no libc involved. */
void ds_semihost_write0(const char *s);
/* Raw semihosting SYS_EXIT with an error reason: QEMU exits with status 1. */
void ds_semihost_exit_error(void) __attribute__((noreturn));

#endif /* DS_STARTUP_H */
