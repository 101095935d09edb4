/* The LIF/IF neuron's time scan (spiketwin.neurons.lif_scan, lif_spikes), the same scan of a BatchNorm output
   computed on the fly (spiketwin.memory's recompute) and the scan's backward (lif_u, lif_backward), each in one
   pass over its [T][N] tensors, on one thread.

   Elements are taken in blocks of BLOCK; each block runs all its T steps before the next block starts, so the
   membrane state (forward) and the running gradient (backward) stay in the L1 cache, and each input/output
   element is read or written once. Every operation is the one the torch path runs, in the same order and
   precision (a fused multiply-add exactly where torch's addcmul_ and batch_norm kernels round once), so the
   forward results are bit-identical, and so is the backward with the ATan surrogate.
   The sigmoid surrogate needs exp: lif_exp below is a vectorisable exp accurate to about 1 ulp, like torch's
   (SLEEF) exp, but not bitwise equal to it, so sigmoid gradients agree to a few ulp only.

   mode (bits, see spiketwin.neurons.lif._native_mode): LEAK_* (charge), SOFT (soft reset, else hard to v_reset),
   SHIFT (v_reset != 0: the leak pulls towards v_reset), NEGATED (the default neuron's negated form: the H buffer
   holds -H, and the state is W = -V), DETACH (detach_reset: the reset gets no gradient). */
#include "kernel.h"
#include <math.h>
#include <string.h>

#define BLOCK 512

enum { LEAK_NONE = 0, LEAK_DECAY_INPUT = 1, LEAK_PLAIN = 2, LEAK_MASK = 3,
       SOFT = 4, SHIFT = 8, NEGATED = 16, DETACH = 32 };
enum { SURROGATE_SIGMOID = 0, SURROGATE_ATAN = 1 };

#define INLINE static inline __attribute__((always_inline))

/* exp(z) by Cody-Waite reduction z = k ln2 + r (|r| <= ln2/2), a Taylor polynomial in r and a scale 2^k built
   from the exponent bits; arguments are clamped to where 2^k is a normal number, and above that range it returns
   +inf (there the sigmoid differs from 0 or 1 by less than the smallest normal number). */
#define DEFINE_EXP(NAME, REAL, UINT, MAGIC, BIAS, MANT, LO, HI, LN2_HI, LN2_LO, POLY)                              \
    INLINE REAL NAME(REAL z)                                                                                   \
    {                                                                                                          \
        REAL c = z < (REAL)(LO) ? (REAL)(LO) : z;                                                              \
        c = c > (REAL)(HI) ? (REAL)(HI) : c;                                                                   \
        REAL t = c * (REAL)1.44269504088896340736 + (REAL)(MAGIC); /* round(c / ln2) in the low bits */        \
        REAL k = t - (REAL)(MAGIC);                                                                            \
        REAL r = (c - k * (REAL)(LN2_HI)) - k * (REAL)(LN2_LO);                                                \
        REAL p = POLY;                                                                                         \
        UINT bits, magic_bits;                                                                                 \
        REAL magic = (REAL)(MAGIC), scale;                                                                     \
        memcpy(&bits, &t, sizeof bits);                                                                        \
        memcpy(&magic_bits, &magic, sizeof magic_bits);                                                        \
        bits = (bits - magic_bits + (UINT)(BIAS)) << (MANT);                                                   \
        memcpy(&scale, &bits, sizeof scale);                                                                   \
        REAL e = p * scale;                                                                                    \
        e = z > (REAL)(HI) ? (REAL)INFINITY : e;                                                               \
        return z != z ? z : e;                                                                                 \
    }

/* Taylor polynomials of exp(r) by Horner's rule, degree 7 (float) and 13 (double): the truncation error at
   |r| = ln2/2 is below 1e-8 and 1e-17 relative, under half an ulp. The loops over constants unroll. */
INLINE float lif_poly_f32(float r)
{
    static const float inverse_factorial[8] = {1.0f, 1.0f, 1.0f / 2, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720,
                                               1.0f / 5040};
    float p = inverse_factorial[7];
    for (int k = 6; k >= 0; k--)
        p = p * r + inverse_factorial[k];
    return p;
}

INLINE double lif_poly_f64(double r)
{
    static const double inverse_factorial[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720,
        1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
    double p = inverse_factorial[13];
    for (int k = 12; k >= 0; k--)
        p = p * r + inverse_factorial[k];
    return p;
}

DEFINE_EXP(lif_exp_f32, float, uint32_t, 12582912.0f, 127, 23, -87.0f, 88.0f, 0.693145751953125f,
           1.428606765330187045e-06f, lif_poly_f32(r))
DEFINE_EXP(lif_exp_f64, double, uint64_t, 6755399441055744.0, 1023, 52, -708.0, 709.0, 6.93147180369123816490e-01,
           1.90821492927058770002e-10, lif_poly_f64(r))

/* One element of the scan: charge H from state v and input x (spiketwin.neurons.lif._charge), or its negation in
   negated mode (_scan_negated); fire; reset. Returns the value the H buffer stores; *v becomes the new state. */
#define DEFINE_CHARGE_AND_RESET(NAME, REAL)                                                                    \
    INLINE REAL NAME(REAL x, REAL *v, int mode, REAL tau, REAL vth, REAL vreset)                               \
    {                                                                                                          \
        if (mode & NEGATED) { /* W = -V: -H = W - (X + W) / tau; W = -H unless H >= V_th, then 0 */           \
            REAL nh = *v - (x + *v) / tau;                                                                     \
            *v = nh <= -vth ? (REAL)0 : nh;                                                                    \
            return nh;                                                                                         \
        }                                                                                                      \
        REAL h, rest = (mode & SHIFT) ? *v - vreset : *v;                                                      \
        switch (mode & LEAK_MASK) {                                                                            \
        case LEAK_NONE: h = *v + x; break;                                                                     \
        case LEAK_DECAY_INPUT: h = *v + (x - rest) / tau; break;                                               \
        default: h = *v - rest / tau + x; break;                                                               \
        }                                                                                                      \
        int fired = h >= vth;                                                                                  \
        *v = (mode & SOFT) ? (fired ? h - vth : h) : (fired ? vreset : h);                                     \
        return h;                                                                                              \
    }

DEFINE_CHARGE_AND_RESET(lif_charge_f32, float)
DEFINE_CHARGE_AND_RESET(lif_charge_f64, double)

/* Forward over x[T][N] from v0[N]: H (or -H) of every step into h (NULL: not kept; h == x: over the input),
   spikes into spikes (NULL: not wanted), the final V into v. */
#define DEFINE_LIF_FORWARD(NAME, BODY, REAL, CHARGE)                                                           \
    INLINE void BODY(const REAL *x, REAL *h, REAL *restrict spikes, const REAL *restrict v0, REAL *restrict v, \
                     int64_t T, int64_t N, int mode, REAL tau, REAL vth, REAL vreset)                          \
    {                                                                                                          \
        REAL sign = (mode & NEGATED) ? -1 : 1, level = sign * vth;                                             \
        for (int64_t start = 0; start < N; start += BLOCK) {                                                   \
            int64_t n = N - start < BLOCK ? N - start : BLOCK;                                                 \
            REAL *restrict state = v + start;                                                                  \
            for (int64_t i = 0; i < n; i++)                                                                    \
                state[i] = sign * v0[start + i];                                                               \
            for (int64_t t = 0; t < T; t++) {                                                                  \
                int64_t at = t * N + start;                                                                    \
                if (h == x) { /* in place: one pointer, read then written */                                   \
                    REAL *restrict io = h + at;                                                                \
                    for (int64_t i = 0; i < n; i++)                                                            \
                        io[i] = CHARGE(io[i], &state[i], mode, tau, vth, vreset);                              \
                } else if (h && spikes) {                                                                      \
                    const REAL *restrict in = x + at;                                                          \
                    REAL *restrict out = h + at, *restrict s = spikes + at;                                    \
                    for (int64_t i = 0; i < n; i++) {                                                          \
                        REAL value = CHARGE(in[i], &state[i], mode, tau, vth, vreset);                         \
                        out[i] = value;                                                                        \
                        s[i] = (mode & NEGATED) ? (REAL)(value <= level) : (REAL)(value >= level);             \
                    }                                                                                          \
                } else if (h) {                                                                                \
                    const REAL *restrict in = x + at;                                                          \
                    REAL *restrict out = h + at;                                                               \
                    for (int64_t i = 0; i < n; i++)                                                            \
                        out[i] = CHARGE(in[i], &state[i], mode, tau, vth, vreset);                             \
                } else {                                                                                       \
                    const REAL *restrict in = x + at;                                                          \
                    REAL *restrict s = spikes + at;                                                            \
                    for (int64_t i = 0; i < n; i++) {                                                          \
                        REAL value = CHARGE(in[i], &state[i], mode, tau, vth, vreset);                         \
                        s[i] = (mode & NEGATED) ? (REAL)(value <= level) : (REAL)(value >= level);             \
                    }                                                                                          \
                }                                                                                              \
            }                                                                                                  \
            for (int64_t i = 0; i < n; i++)                                                                    \
                state[i] = sign * state[i];                                                                    \
        }                                                                                                      \
    }                                                                                                          \
    /* one specialised copy per mode the neurons use (the mode is a constant inside each) */                   \
    KERNEL void NAME(const REAL *x, REAL *h, REAL *spikes, const REAL *v0, REAL *v, int64_t T, int64_t N,      \
                     int32_t mode, REAL tau, REAL vth, REAL vreset)                                            \
    {                                                                                                          \
        switch (mode & ~DETACH) {                                                                              \
        case LEAK_DECAY_INPUT | NEGATED: BODY(x, h, spikes, v0, v, T, N, LEAK_DECAY_INPUT | NEGATED, tau, vth, vreset); break; \
        case LEAK_NONE: BODY(x, h, spikes, v0, v, T, N, LEAK_NONE, tau, vth, vreset); break;                   \
        case LEAK_NONE | SOFT: BODY(x, h, spikes, v0, v, T, N, LEAK_NONE | SOFT, tau, vth, vreset); break;     \
        case LEAK_DECAY_INPUT | SOFT: BODY(x, h, spikes, v0, v, T, N, LEAK_DECAY_INPUT | SOFT, tau, vth, vreset); break; \
        default: BODY(x, h, spikes, v0, v, T, N, mode & ~DETACH, tau, vth, vreset); break;                     \
        }                                                                                                      \
    }

DEFINE_LIF_FORWARD(lif_forward_f32, lif_forward_body_f32, float, lif_charge_f32)
DEFINE_LIF_FORWARD(lif_forward_f64, lif_forward_body_f64, double, lif_charge_f64)

/* The forward scan of a BatchNorm's output, the normalisation fused in (spiketwin.memory's BN -> LIF recompute):
   z[T][R][C][L] (R rows of C channels of L elements per step) becomes x = fma(z, scale[c], shift[c]), as torch's
   batch_norm computes its output from the per-channel terms (one rounding), then the scan as lif_forward, H into
   h (not z); the state v[R][C][L] is scratch. Each row of C L elements runs its T steps before the next. */
#define DEFINE_LIF_AFFINE_FORWARD(NAME, BODY, REAL, CHARGE, FMA)                                             \
    INLINE void BODY(const REAL *z, const REAL *restrict scale, const REAL *restrict shift, REAL *h,          \
                     const REAL *restrict v0, REAL *restrict v, int64_t T, int64_t R, int64_t C, int64_t L,   \
                     int mode, REAL tau, REAL vth, REAL vreset)                                               \
    {                                                                                                         \
        REAL sign = (mode & NEGATED) ? -1 : 1;                                                                \
        int64_t row = C * L, N = R * row;                                                                     \
        for (int64_t r = 0; r < R; r++) {                                                                     \
            REAL *restrict state = v + r * row;                                                               \
            for (int64_t i = 0; i < row; i++)                                                                 \
                state[i] = sign * v0[r * row + i];                                                            \
            for (int64_t t = 0; t < T; t++) {                                                                 \
                int64_t at = t * N + r * row;                                                                 \
                if (L == 1) { /* channels innermost (tokens): the terms vary along the loop */                \
                    const REAL *restrict src = z + at;                                                        \
                    REAL *restrict dst = h + at;                                                              \
                    for (int64_t c = 0; c < C; c++)                                                           \
                        dst[c] = CHARGE(FMA(src[c], scale[c], shift[c]), &state[c], mode, tau, vth, vreset);  \
                    continue;                                                                                 \
                }                                                                                             \
                for (int64_t c = 0; c < C; c++) {                                                             \
                    const REAL *restrict src = z + at + c * L;                                                \
                    REAL *restrict dst = h + at + c * L, *restrict st = state + c * L, a = scale[c], b = shift[c]; \
                    for (int64_t i = 0; i < L; i++)                                                           \
                        dst[i] = CHARGE(FMA(src[i], a, b), &st[i], mode, tau, vth, vreset);                   \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    KERNEL void NAME(const REAL *z, const REAL *scale, const REAL *shift, REAL *h, const REAL *v0, REAL *v,    \
                     int64_t T, int64_t R, int64_t C, int64_t L, int32_t mode, REAL tau, REAL vth, REAL vreset) \
    {                                                                                                         \
        if ((mode & ~DETACH) == (LEAK_DECAY_INPUT | NEGATED))                                                 \
            BODY(z, scale, shift, h, v0, v, T, R, C, L, LEAK_DECAY_INPUT | NEGATED, tau, vth, vreset);        \
        else                                                                                                  \
            BODY(z, scale, shift, h, v0, v, T, R, C, L, mode & ~DETACH, tau, vth, vreset);                    \
    }

DEFINE_LIF_AFFINE_FORWARD(lif_affine_forward_f32, lif_affine_forward_body_f32, float, lif_charge_f32, fmaf)
DEFINE_LIF_AFFINE_FORWARD(lif_affine_forward_f64, lif_affine_forward_body_f64, double, lif_charge_f64, fma)

/* The surrogate derivative at u = H - V_th (spiketwin.surrogate: Sigmoid.grad, ATan.grad, same operations). */
#define DEFINE_SURROGATE(NAME, REAL, EXP)                                                                      \
    INLINE REAL NAME(REAL u, int kind, REAL alpha, REAL atan_scale)                                            \
    {                                                                                                          \
        if (kind == SURROGATE_ATAN) { /* (alpha / 2) / (1 + (pi/2 alpha u)^2), as reciprocal times alpha/2 */ \
            REAL a = atan_scale * u;                                                                           \
            return ((REAL)1 / ((REAL)1 + a * a)) * (alpha / 2);                                                \
        }                                                                                                      \
        REAL s = (REAL)1 / ((REAL)1 + EXP(-(u * alpha)));                                                      \
        return (s * alpha) * ((REAL)1 - s);                                                                    \
    }

DEFINE_SURROGATE(lif_surrogate_f32, float, lif_exp_f32)
DEFINE_SURROGATE(lif_surrogate_f64, double, lif_exp_f64)

/* Backward from the forward's H buffer h[T][N] (-H in negated mode), dL/dspikes gs[T][N] and dL/dV_T gv[N]
   (NULL: none): dL/dX into gx[T][N], dL/dV_0 into gv0[N]. Per element, in reverse time (lif_backward):
   g_t = sg_t gs_t + g_{t+1} (dV_t/dH_t dH/dV)  (g_T-1 = sg gs + gv dV/dH), dL/dX_t = g_t dH/dX.
   One step over n elements; later says where the later gradient comes from (a constant in each copy, so the
   loop has no branch): 0 nowhere (last step, no gv), 1 g (the running dL/dH, updated here), 2 gv. */
#define DEFINE_LIF_BACKWARD(NAME, STEP, BODY, REAL, SURROGATE, FMA)                                           \
    INLINE void STEP(const REAL *restrict ht, const REAL *restrict gst, const REAL *restrict gv,               \
                     REAL *restrict g, REAL *restrict gxt, int64_t n, int later, int mode, int kind, REAL vth, \
                     REAL vreset, REAL dh_dv, REAL dh_dx, REAL alpha, REAL atan_scale)                         \
    {                                                                                                          \
        for (int64_t i = 0; i < n; i++) {                                                                      \
            REAL u = (mode & NEGATED) ? -(ht[i] + vth) : ht[i] - vth;                                          \
            REAL sg = SURROGATE(u, kind, alpha, atan_scale);                                                   \
            REAL dv_dh;                                                                                        \
            if (mode & SOFT)                                                                                   \
                dv_dh = (mode & DETACH) ? (REAL)1 : sg * -vth + (REAL)1;                                       \
            else                                                                                               \
                dv_dh = (mode & DETACH) ? (REAL)(u < 0) : (REAL)(u < 0) + (vreset - (u + vth)) * sg;           \
            REAL grad = sg * gst[i];                                                                           \
            /* torch's addcmul_ rounds once (a fused multiply-add): so does FMA */                             \
            if (later == 1)                                                                                    \
                grad = FMA(g[i], dv_dh * dh_dv, grad);                                                         \
            else if (later == 2)                                                                               \
                grad = FMA(gv[i], dv_dh, grad);                                                                \
            g[i] = grad;                                                                                       \
            gxt[i] = grad * dh_dx;                                                                             \
        }                                                                                                      \
    }                                                                                                          \
    INLINE void BODY(const REAL *h, const REAL *gs, const REAL *gv, REAL *gx, REAL *gv0, int64_t T, int64_t N, \
                     int mode, int kind, REAL vth, REAL vreset, REAL dh_dv, REAL dh_dx, REAL alpha,            \
                     REAL atan_scale)                                                                          \
    {                                                                                                          \
        for (int64_t start = 0; start < N; start += BLOCK) {                                                   \
            int64_t n = N - start < BLOCK ? N - start : BLOCK;                                                 \
            REAL *restrict g = gv0 + start; /* dL/dH of the later step, then dL/dV_0 */                       \
            for (int64_t t = T - 1; t >= 0; t--) {                                                             \
                int64_t at = t * N + start;                                                                    \
                if (t < T - 1)                                                                                 \
                    STEP(h + at, gs + at, NULL, g, gx + at, n, 1, mode, kind, vth, vreset, dh_dv, dh_dx, alpha, \
                         atan_scale);                                                                          \
                else if (gv)                                                                                   \
                    STEP(h + at, gs + at, gv + start, g, gx + at, n, 2, mode, kind, vth, vreset, dh_dv, dh_dx, \
                         alpha, atan_scale);                                                                   \
                else                                                                                           \
                    STEP(h + at, gs + at, NULL, g, gx + at, n, 0, mode, kind, vth, vreset, dh_dv, dh_dx, alpha, \
                         atan_scale);                                                                          \
            }                                                                                                  \
            for (int64_t i = 0; i < n; i++)                                                                    \
                g[i] = g[i] * dh_dv;                                                                           \
        }                                                                                                      \
    }                                                                                                          \
    /* a specialised copy for the default neuron with the sigmoid surrogate (mode and kind constant there) */  \
    KERNEL void NAME(const REAL *h, const REAL *gs, const REAL *gv, REAL *gx, REAL *gv0, int64_t T, int64_t N, \
                     int32_t mode, int32_t kind, REAL vth, REAL vreset, REAL dh_dv, REAL dh_dx, REAL alpha,    \
                     REAL atan_scale)                                                                          \
    {                                                                                                          \
        if (mode == (LEAK_DECAY_INPUT | NEGATED | DETACH) && kind == SURROGATE_SIGMOID)                        \
            BODY(h, gs, gv, gx, gv0, T, N, LEAK_DECAY_INPUT | NEGATED | DETACH, SURROGATE_SIGMOID, vth, vreset, \
                 dh_dv, dh_dx, alpha, atan_scale);                                                             \
        else                                                                                                   \
            BODY(h, gs, gv, gx, gv0, T, N, mode, kind, vth, vreset, dh_dv, dh_dx, alpha, atan_scale);          \
    }

DEFINE_LIF_BACKWARD(lif_backward_f32, lif_backward_step_f32, lif_backward_body_f32, float, lif_surrogate_f32, fmaf)
DEFINE_LIF_BACKWARD(lif_backward_f64, lif_backward_step_f64, lif_backward_body_f64, double, lif_surrogate_f64, fma)
