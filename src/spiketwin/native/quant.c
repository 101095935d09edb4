/* The LSQ quantizer's inference forward (spiketwin.quant.Quantizer, no autograd) in one pass: per element,
   v = x / s; r = v + (floor(v + 1/2) - v); out = clamp(r, n_min, n_max) * s. The operations of the torch path
   (round_half_up_ste, clamp, the product), in its order and precision, so the bits are the same; NaN stays NaN. */
#include "kernel.h"
#include <math.h>

#define DEFINE_QUANTIZE(NAME, REAL, FLOOR)                                                                      \
    KERNEL void NAME(const REAL *restrict x, REAL *restrict out, int64_t n, REAL s, REAL n_min, REAL n_max)   \
    {                                                                                                          \
        for (int64_t i = 0; i < n; i++) {                                                                      \
            REAL v = x[i] / s;                                                                                 \
            REAL r = v + (FLOOR(v + (REAL)0.5) - v);                                                           \
            r = r < n_min ? n_min : r;                                                                         \
            r = r > n_max ? n_max : r;                                                                         \
            out[i] = r * s;                                                                                    \
        }                                                                                                      \
    }

DEFINE_QUANTIZE(quantize_f32, float, floorf)
DEFINE_QUANTIZE(quantize_f64, double, floor)
