/* The ST-BIF neuron's sequence call (spiketwin.neurons.STBIF.multi_step) in one pass over its input.

   x[T][B][N] enters from the state total[B][N], count[B][N] (updated in place). Per step and neuron:
   total += x; target = clamp(floor(total / theta + 1/2), n_min, n_max); delta = target - count;
   the step is "far" for the sample if some |delta| > m; delta = clamp(delta, -m, m) (m: spikes per step);
   count += delta; spikes = delta * theta. pending[B][T] records the far flags. Every operation is the one the
   torch path runs, in the same order and precision, so the results are bit-identical.

   was_pending (NULL: compute every sample) holds per sample whether a neuron was pending before the call:
   a sample without one whose input is all zero can only output zeros and keep its state, so it is skipped. */
#include "kernel.h"
#include <math.h>
#include <string.h>

/* The rule both kernels share: the move of the spike count cnt toward the quantizer level of the summed input v,
   clamp(floor(v / theta + 1/2), n_min, n_max), by at most m; *far is set when it was more than m away. */
#define DEFINE_STBIF_MOVE(NAME, REAL, FLOOR)                                                                    \
    static inline REAL NAME(REAL v, REAL cnt, REAL theta, REAL n_min, REAL n_max, REAL m, int *far)            \
    {                                                                                                          \
        REAL target = FLOOR(v / theta + (REAL)0.5);                                                            \
        target = target < n_min ? n_min : target;                                                              \
        target = target > n_max ? n_max : target;                                                              \
        REAL delta = target - cnt;                                                                             \
        *far |= (delta > m) | (delta < -m);                                                                    \
        delta = delta < -m ? -m : delta;                                                                       \
        return delta > m ? m : delta;                                                                          \
    }

DEFINE_STBIF_MOVE(stbif_move_f32, float, floorf)
DEFINE_STBIF_MOVE(stbif_move_f64, double, floor)

#define DEFINE_STBIF_STEPS(NAME, REAL, MOVE)                                                                    \
    KERNEL void NAME(const REAL *restrict x, REAL *restrict total, REAL *restrict count, REAL *restrict spikes, \
                     uint8_t *restrict pending, const uint8_t *restrict was_pending, int64_t T, int64_t B,     \
                     int64_t N, REAL theta, REAL n_min, REAL n_max, REAL m)                                    \
    {                                                                                                          \
        for (int64_t b = 0; b < B; b++) {                                                                      \
            REAL *restrict tot = total + b * N;                                                                \
            REAL *restrict cnt = count + b * N;                                                                \
            if (was_pending && !was_pending[b]) {                                                              \
                int input = 0;                                                                                 \
                for (int64_t t = 0; t < T && !input; t++) {                                                    \
                    const REAL *restrict xt = x + (t * B + b) * N;                                             \
                    for (int64_t i = 0; i < N; i++)                                                            \
                        input |= xt[i] != 0;                                                                   \
                }                                                                                              \
                if (!input) {                                                                                  \
                    for (int64_t t = 0; t < T; t++) {                                                          \
                        memset(spikes + (t * B + b) * N, 0, (size_t)N * sizeof(REAL));                         \
                        pending[b * T + t] = 0;                                                                \
                    }                                                                                          \
                    continue;                                                                                  \
                }                                                                                              \
            }                                                                                                  \
            for (int64_t t = 0; t < T; t++) {                                                                  \
                const REAL *restrict xt = x + (t * B + b) * N;                                                 \
                REAL *restrict out = spikes + (t * B + b) * N;                                                 \
                int far = 0;                                                                                   \
                for (int64_t i = 0; i < N; i++) {                                                              \
                    REAL v = tot[i] + xt[i];                                                                   \
                    tot[i] = v;                                                                                \
                    REAL delta = MOVE(v, cnt[i], theta, n_min, n_max, m, &far);                                \
                    cnt[i] += delta;                                                                           \
                    out[i] = delta * theta;                                                                    \
                }                                                                                              \
                pending[b * T + t] = (uint8_t)far;                                                             \
            }                                                                                                  \
        }                                                                                                      \
    }

DEFINE_STBIF_STEPS(stbif_steps_f32, float, stbif_move_f32)
DEFINE_STBIF_STEPS(stbif_steps_f64, double, stbif_move_f64)

/* The exact-state neuron's step (spiketwin.neurons.ExactSTBIF): x[B][N] is the neuron's accumulated input (not an
   increment), count[B][N] its spike count, an integer type that holds every level. Per neuron: target =
   clamp(floor(x / theta + 1/2), n_min, n_max); delta = target - count; far (per sample) if some |delta| > m;
   change = clamp(delta, -m, m); count += change; out = count * theta. The same operations as the torch path, in
   the same order and precision (the count, an integer, converts exactly): bit-identical. */
#define DEFINE_STBIF_EXACT_STEP(NAME, REAL, COUNT, MOVE)                                                        \
    KERNEL void NAME(const REAL *restrict x, COUNT *restrict count, REAL *restrict out, COUNT *restrict change, \
                     uint8_t *restrict far, int64_t B, int64_t N, REAL theta, REAL n_min, REAL n_max, REAL m)   \
    {                                                                                                          \
        for (int64_t b = 0; b < B; b++) {                                                                      \
            const REAL *restrict xb = x + b * N;                                                               \
            COUNT *restrict cnt = count + b * N;                                                               \
            REAL *restrict o = out + b * N;                                                                    \
            COUNT *restrict k = change + b * N;                                                                \
            int away = 0;                                                                                      \
            for (int64_t i = 0; i < N; i++) {                                                                  \
                REAL before = (REAL)cnt[i];                                                                    \
                REAL delta = MOVE(xb[i], before, theta, n_min, n_max, m, &away);                               \
                REAL c = before + delta;                                                                       \
                cnt[i] = (COUNT)c;                                                                             \
                k[i] = (COUNT)delta;                                                                           \
                o[i] = c * theta;                                                                              \
            }                                                                                                  \
            far[b] = (uint8_t)away;                                                                            \
        }                                                                                                      \
    }

DEFINE_STBIF_EXACT_STEP(stbif_exact_step_i8_f32, float, int8_t, stbif_move_f32)
DEFINE_STBIF_EXACT_STEP(stbif_exact_step_i16_f32, float, int16_t, stbif_move_f32)
DEFINE_STBIF_EXACT_STEP(stbif_exact_step_i32_f32, float, int32_t, stbif_move_f32)
DEFINE_STBIF_EXACT_STEP(stbif_exact_step_i8_f64, double, int8_t, stbif_move_f64)
DEFINE_STBIF_EXACT_STEP(stbif_exact_step_i16_f64, double, int16_t, stbif_move_f64)
DEFINE_STBIF_EXACT_STEP(stbif_exact_step_i32_f64, double, int32_t, stbif_move_f64)
