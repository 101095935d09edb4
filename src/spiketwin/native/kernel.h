/* Shared by the kernels of spiketwin.native: plain C11, no torch headers. */
#ifndef SPIKETWIN_KERNEL_H
#define SPIKETWIN_KERNEL_H

#include <stdint.h>

/* On x86-64 Linux with GCC each kernel is compiled for AVX-512, AVX2 and the baseline, and the loader picks
   the best the CPU has (function multi-versioning), so one cached library serves every machine. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL
#endif

#endif
