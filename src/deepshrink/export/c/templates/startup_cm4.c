/*
 * startup_cm4.c -- deepshrink bare-metal startup for Cortex-M4 (C99).
 *
 * Pairs with cortex_m4.ld.in. Link with -nostartfiles: this file replaces
 * newlib's crt0 / rdimon-crt0 (rdimon-crt0 asks the debugger for the stack
 * and heap via SYS_HEAPINFO and never copies .data out of flash, so it is
 * wrong for an execute-in-place image).
 *
 * Reset sequence:
 *   1. copy .data from flash (_sidata) to RAM (_sdata.._edata)
 *   2. zero .bss (_sbss.._ebss)
 *   3. paint the unused stack (_sstack..SP) with DS_STACK_PAINT
 *   4. enable CP10/CP11 (FPU) only if DS_USE_FPU is defined
 *   5. run .preinit_array / .init_array, open the semihosting std handles
 *      when librdimon is linked (weak reference, so nosys.specs works too)
 *   6. rc = main(); optionally report peak stack (-DDS_REPORT_STACK)
 *   7. exit(rc): newlib flushes stdio and librdimon's _exit issues
 *      semihosting SYS_EXIT_EXTENDED, so QEMU exits with main's return code.
 *
 * HardFault / MemManage / BusFault / UsageFault and any unexpected exception
 * print a one-line report through semihosting SYS_WRITE0 and stop with
 * SYS_EXIT(ADP_Stopped_RunTimeErrorUnknown) -> QEMU exit status 1.
 * Semihosting uses BKPT 0xAB: on real hardware without a debugger attached
 * that instruction itself faults, so these reports are for QEMU/debug runs.
 *
 * Build options (preprocessor):
 *   DS_USE_FPU        enable the FPU (required for -mfloat-abi=hard/softfp)
 *   DS_REPORT_STACK   print "[ds] stack peak: N / M bytes" after main returns
 *   DS_STACK_PAINT    paint word (default 0xDEADBEEF)
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__ARM_FP) && !defined(DS_USE_FPU)
#error "compiled with FPU instructions (-mfloat-abi=hard/softfp) but DS_USE_FPU is not defined"
#endif

#ifndef DS_STACK_PAINT
#define DS_STACK_PAINT 0xDEADBEEFu
#endif

/* ---- symbols from cortex_m4.ld.in ---------------------------------------- */
extern uint32_t _sidata[];          /* .data load address (flash)  */
extern uint32_t _sdata[], _edata[]; /* .data run address (RAM)     */
extern uint32_t _sbss[], _ebss[];   /* .bss                        */
extern uint32_t _sstack[];          /* lowest stack word           */
extern uint32_t _estack[];          /* initial SP (top of stack)   */
extern char __heap_start__[], __heap_end__[];
extern void (*__preinit_array_start[])(void);
extern void (*__preinit_array_end[])(void);
extern void (*__init_array_start[])(void);
extern void (*__init_array_end[])(void);

int main(void);

/* librdimon opens the semihosting stdin/stdout/stderr handles here; weak so
 * that linking without rdimon (nosys.specs) still works. */
extern void initialise_monitor_handles(void) __attribute__((weak));

/* Public helpers (see ds_startup.h). */
uint32_t ds_stack_size_bytes(void);
uint32_t ds_stack_peak_bytes(void);
void ds_semihost_write0(const char *s);
void ds_semihost_exit_error(void) __attribute__((noreturn));

void Reset_Handler(void) __attribute__((noreturn));
void Default_Handler(void);
void HardFault_Handler(void) __attribute__((naked));
void ds_fault_report(const uint32_t *frame, uint32_t exc_return) __attribute__((noreturn, used));

/* Weak aliases: generated model code / a board file may override any of them. */
void NMI_Handler(void) __attribute__((weak, alias("Default_Handler")));
void MemManage_Handler(void) __attribute__((weak, alias("HardFault_Handler")));
void BusFault_Handler(void) __attribute__((weak, alias("HardFault_Handler")));
void UsageFault_Handler(void) __attribute__((weak, alias("HardFault_Handler")));
void SVC_Handler(void) __attribute__((weak, alias("Default_Handler")));
void DebugMon_Handler(void) __attribute__((weak, alias("Default_Handler")));
void PendSV_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));

/* ---- vector table --------------------------------------------------------- */
typedef union {
    void (*handler)(void);
    void *stack_top;
} ds_vector_t;

__attribute__((section(".isr_vector"), used))
const ds_vector_t ds_vector_table[16] = {
    { .stack_top = _estack },
    { .handler = Reset_Handler },
    { .handler = NMI_Handler },
    { .handler = HardFault_Handler },
    { .handler = MemManage_Handler },
    { .handler = BusFault_Handler },
    { .handler = UsageFault_Handler },
    { .handler = 0 },
    { .handler = 0 },
    { .handler = 0 },
    { .handler = 0 },
    { .handler = SVC_Handler },
    { .handler = DebugMon_Handler },
    { .handler = 0 },
    { .handler = PendSV_Handler },
    { .handler = SysTick_Handler },
};

/* ---- system control block ------------------------------------------------- */
#define DS_SCB_VTOR  (*(volatile uint32_t *)0xE000ED08u)
#define DS_SCB_CFSR  (*(volatile uint32_t *)0xE000ED28u)
#define DS_SCB_HFSR  (*(volatile uint32_t *)0xE000ED2Cu)
#define DS_SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define DS_SCB_BFAR  (*(volatile uint32_t *)0xE000ED38u)
#define DS_SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

/* ---- semihosting ---------------------------------------------------------- */
#define DS_SYS_WRITE0 0x04u
#define DS_SYS_EXIT 0x18u
#define DS_ADP_Stopped_RunTimeErrorUnknown 0x20023u

static uint32_t ds_semihost(uint32_t op, uint32_t arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register uint32_t r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void ds_semihost_write0(const char *s)
{
    (void)ds_semihost(DS_SYS_WRITE0, (uint32_t)(uintptr_t)s);
}

void ds_semihost_exit_error(void)
{
    /* AArch32 SYS_EXIT: r1 holds the reason itself; anything other than
     * ADP_Stopped_ApplicationExit makes QEMU exit with status 1. */
    for (;;) {
        (void)ds_semihost(DS_SYS_EXIT, DS_ADP_Stopped_RunTimeErrorUnknown);
    }
}

/* Small static formatting helpers: no printf, no heap, no stack buffers. */
static char *ds_put_str(char *p, const char *s)
{
    while (*s != '\0') {
        *p++ = *s++;
    }
    return p;
}

static char *ds_put_hex(char *p, uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    int shift;
    *p++ = '0';
    *p++ = 'x';
    for (shift = 28; shift >= 0; shift -= 4) {
        *p++ = digits[(v >> (unsigned)shift) & 0xFu];
    }
    return p;
}

static char *ds_put_dec(char *p, uint32_t v)
{
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + (v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (n > 0) {
        *p++ = tmp[--n];
    }
    return p;
}

static char ds_msg[192];

/* ---- stack painting / measurement ----------------------------------------- */
uint32_t ds_stack_size_bytes(void)
{
    return (uint32_t)((uintptr_t)_estack - (uintptr_t)_sstack);
}

uint32_t ds_stack_peak_bytes(void)
{
    const volatile uint32_t *p = _sstack;
    while (p < (const volatile uint32_t *)_estack && *p == DS_STACK_PAINT) {
        ++p;
    }
    return (uint32_t)((uintptr_t)_estack - (uintptr_t)p);
}

/* ---- heap: fixed region [__heap_start__, __heap_end__) for newlib malloc -- */
void *_sbrk(ptrdiff_t incr);
void *_sbrk(ptrdiff_t incr)
{
    static char *brk = 0;
    char *prev;
    if (brk == 0) {
        brk = __heap_start__;
    }
    if ((incr > 0 && incr > __heap_end__ - brk) || (incr < 0 && -incr > brk - __heap_start__)) {
        errno = ENOMEM;
        return (void *)-1;
    }
    prev = brk;
    brk += incr;
    return prev;
}

/* ---- reset ---------------------------------------------------------------- */
void Reset_Handler(void)
{
    const uint32_t *src;
    volatile uint32_t *dst;
    volatile uint32_t *paint;
    uintptr_t sp;
    size_t i, n;
    int rc;

    /* volatile destinations: keeps GCC/Clang from turning these loops into
     * memcpy/memset calls, so the startup needs no libc string routines. */
    src = _sidata;
    for (dst = _sdata; dst < _edata; ++dst, ++src) {
        *dst = *src;
    }
    for (dst = _sbss; dst < _ebss; ++dst) {
        *dst = 0u;
    }

    /* Paint below the live part of the stack, with a 64-byte margin; volatile
     * stores so the compiler cannot turn this into a memset call that would
     * push its own frame into the region being painted. */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    sp = (sp - 64u) & ~(uintptr_t)3u;
    for (paint = _sstack; (uintptr_t)paint < sp; ++paint) {
        *paint = DS_STACK_PAINT;
    }

#if defined(DS_USE_FPU)
    DS_SCB_CPACR |= (0xFu << 20); /* CP10 + CP11 full access */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    DS_SCB_VTOR = (uint32_t)(uintptr_t)ds_vector_table;

    n = (size_t)(__preinit_array_end - __preinit_array_start);
    for (i = 0; i < n; ++i) {
        __preinit_array_start[i]();
    }
    n = (size_t)(__init_array_end - __init_array_start);
    for (i = 0; i < n; ++i) {
        __init_array_start[i]();
    }

    if (initialise_monitor_handles != 0) {
        initialise_monitor_handles();
    }

    rc = main();

#if defined(DS_REPORT_STACK)
    {
        char *p = ds_msg;
        fflush(stdout);
        p = ds_put_str(p, "[ds] stack peak: ");
        p = ds_put_dec(p, ds_stack_peak_bytes());
        p = ds_put_str(p, " / ");
        p = ds_put_dec(p, ds_stack_size_bytes());
        p = ds_put_str(p, " bytes\n");
        *p = '\0';
        ds_semihost_write0(ds_msg);
    }
#endif

    exit(rc);
}

/* ---- faults ----------------------------------------------------------------- */
void HardFault_Handler(void)
{
    __asm__ volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "mov r1, lr\n\t"
        "b ds_fault_report\n\t");
}

void ds_fault_report(const uint32_t *frame, uint32_t exc_return)
{
    char *p = ds_msg;
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    p = ds_put_str(p, "[ds] FAULT exc=");
    p = ds_put_dec(p, ipsr & 0x1FFu);
    p = ds_put_str(p, " pc=");
    p = ds_put_hex(p, frame[6]);
    p = ds_put_str(p, " lr=");
    p = ds_put_hex(p, frame[5]);
    p = ds_put_str(p, " cfsr=");
    p = ds_put_hex(p, DS_SCB_CFSR);
    p = ds_put_str(p, " hfsr=");
    p = ds_put_hex(p, DS_SCB_HFSR);
    p = ds_put_str(p, " mmfar=");
    p = ds_put_hex(p, DS_SCB_MMFAR);
    p = ds_put_str(p, " bfar=");
    p = ds_put_hex(p, DS_SCB_BFAR);
    p = ds_put_str(p, " excret=");
    p = ds_put_hex(p, exc_return);
    p = ds_put_str(p, "\n");
    *p = '\0';
    ds_semihost_write0(ds_msg);
    ds_semihost_exit_error();
}

void Default_Handler(void)
{
    char *p = ds_msg;
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    p = ds_put_str(p, "[ds] unexpected exception ");
    p = ds_put_dec(p, ipsr & 0x1FFu);
    p = ds_put_str(p, "\n");
    *p = '\0';
    ds_semihost_write0(ds_msg);
    ds_semihost_exit_error();
}
