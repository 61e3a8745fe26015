/*
 * Phase C of pyproftest.Phases: a JNI method that burns CPU in C until a CLOCK_MONOTONIC deadline
 * (System.nanoTime() uses the same clock on Linux, so Java computes the deadline).
 *
 * Ground truth: the work is in Java_pyproftest_Phases_nativePhase itself (no helper function, nothing
 * inlined from elsewhere), so native samples have that symbol of libphases.so as their leaf, except for
 * the clock reads (clock_gettime, normally in the vDSO), which come once per ~10 us of work. Built -O2
 * without frame pointers (scripts/build-java.sh), as JNI libraries usually are.
 */
#include <jni.h>
#include <stdint.h>
#include <time.h>

#include "pyproftest_Phases.h"

JNIEXPORT jlong JNICALL Java_pyproftest_Phases_nativePhase(JNIEnv *env, jclass cls, jlong deadline)
{
    (void)env;
    (void)cls;
    uint64_t h = (uint64_t)deadline ^ 0x9E3779B97F4A7C15ULL;
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if ((int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec >= (int64_t)deadline) {
            break;
        }
        for (int i = 0; i < 4096; i++) {
            h ^= h >> 33;
            h *= 0xFF51AFD7ED558CCDULL;
            h += (uint64_t)i;
            /* an empty asm that "uses" h: gcc can neither fold nor vectorise the chain */
            __asm__ volatile("" : "+r"(h));
        }
    }
    return (jlong)h;
}
