package pyproftest;

/**
 * A hot outer(int) calling a small inner(int) that C2 inlines: the target for "inlined frames are
 * reported, with the right line numbers".
 *
 * Usage: Inlining [SECONDS] (default: until killed).
 *
 * GROUND TRUTH (once "ready" has been printed):
 *
 *   Thread: one busy thread, the main thread (Java name "main"; its /proc comm is "java", HotSpot does
 *           not rename the launcher's main thread).
 *   Stack:  pyproftest.Inlining.inner(I)I  <- pyproftest.Inlining.outer(I)I at LINE:outer-call
 *           <- pyproftest.Inlining.drive(J)J at LINE:drive-call <- pyproftest.Inlining.main.
 *   Inlining: inner (30 bytecodes, under MaxInlineSize = 35) is inlined into outer by C2. With
 *           -XX:+UnlockDiagnosticVMOptions -XX:+PrintInlining, the tier-4 compilation of outer reports
 *           "@ <bci> pyproftest.Inlining::inner (30 bytes)   inline (hot)" on JDK 17, 21 and 25 (inner's
 *           only call site is in outer, so any "inline" line for inner is an inlining into outer). So in
 *           C2 code inner is never a physical frame: it is an inlined frame (scope) of outer's nmethod.
 *           (inner also gets standalone compilations during the first milliseconds, while outer is still
 *           interpreted; they are unused once outer is compiled.)
 *           outer is NOT inlined into drive: its bytecode (398 bytes) is larger than FreqInlineSize (325)
 *           because of a cold validation branch (never taken, so C2 compiles it to an uncommon trap).
 *           PrintInlining reports "pyproftest.Inlining::outer (398 bytes)   hot method too big" in drive's
 *           tier-4 compilations (C1's tier-3 ones give other reasons, e.g. "callee is too large"). So outer is always the physical, tier-4
 *           compiled frame that holds inner, called from drive's tier-4 (OSR or normal) nmethod.
 *   Lines:  inner's work is on LINE:inner-hot (the loop header is LINE:inner-loop); outer's own work is
 *           on LINE:outer-hot (its loop header is LINE:outer-hot-loop); the call of inner is LINE:outer-call.
 *           CPU split: per iteration of outer's loop, inner does 64 dependent multiply/xor steps and outer
 *           itself 16 steps of the same cost, so about 4/5 of the thread's time is in inner and 1/5 in
 *           outer's own code (approximate: instruction scheduling decides, not the construction).
 *
 * Line markers ("// LINE:<name>" ending a line) are resolved by marker_line() in
 * tests/integration/test_workloads.py.
 *
 * stdout: "ready" once outer has been compiled by C2 (after a 2 s warm-up), then "rounds N" once a second.
 */
public final class Inlining {
    static volatile long sink;

    static int inner(int x) {
        int h = x;
        for (int i = 0; i < 64; i++) {                                               // LINE:inner-loop
            h = h * 0x01000193 ^ (h >>> 13) ^ i;                                     // LINE:inner-hot
        }
        return h;
    }

    static int outer(int n) {
        if (n < 0) {                                                                 // LINE:outer-cold
            // Cold and never taken (callers pass n >= 0): it only makes outer's bytecode larger than
            // C2's FreqInlineSize, so that outer stays a physical frame. See the header.
            long a = n;
            long b = a * 0x9E3779B97F4A7C15L;
            long c = b ^ (b >>> 31) ^ (a << 7);
            long d = c * 0xBF58476D1CE4E5B9L + b;
            long e = d ^ (d >>> 27) ^ (c << 11);
            long f = e * 0x94D049BB133111EBL + d;
            long g = f ^ (f >>> 33) ^ (e << 13);
            long h = g * 0xFF51AFD7ED558CCDL + f;
            long k = h ^ (h >>> 29) ^ (g << 17);
            long m = k * 0xC4CEB9FE1A85EC53L + h;
            long p = m ^ (m >>> 30) ^ (k << 19);
            long q = p * 0xD1342543DE82EF95L + m;
            long r = q ^ (q >>> 28) ^ (p << 23);
            long s = r * 0xA0761D6478BD642FL + q;
            long t = s ^ (s >>> 32) ^ (r << 3);
            long u = t * 0xE7037ED1A0B428DBL + s;
            long v = u ^ (u >>> 26) ^ (t << 5);
            long w = v * 0x8EBC6AF09C88C6E3L + u;
            long x = w ^ (w >>> 25) ^ (v << 9);
            long y = x * 0x589965CC75374CC3L + w;
            long z = y ^ (y >>> 24) ^ (x << 21);
            throw new IllegalArgumentException("negative n: " + n + " " + (a + b + c + d + e + f + g + h
                    + k + m + p + q + r + s + t + u + v + w + x + y + z));
        }
        int acc = n;
        for (int i = 0; i < 16; i++) {                                               // LINE:outer-loop
            acc = inner(acc + i);                                                    // LINE:outer-call
            for (int j = 0; j < 16; j++) {                                           // LINE:outer-hot-loop
                acc = (acc << 5 | acc >>> 27) * 0x2C1B3C6D ^ (acc >>> 11) ^ j;       // LINE:outer-hot
            }
        }
        return acc;
    }

    /** Calls outer until `until` (System.nanoTime); returns the number of calls. */
    static long drive(long until) {
        long calls = 0;
        int acc = 0;
        while (true) {
            for (int k = 0; k < 4096; k++) {
                acc += outer(k & 0x7FFF);                                            // LINE:drive-call
            }
            calls += 4096;
            if (System.nanoTime() >= until) {
                break;
            }
        }
        sink += acc;
        return calls;
    }

    public static void main(String[] args) {
        double seconds = args.length > 0 ? Double.parseDouble(args[0]) : Double.POSITIVE_INFINITY;
        // Warm-up: several drive() calls, so that leaving drive() is not an untaken branch either.
        long warmEnd = System.nanoTime() + 2_000_000_000L;
        while (System.nanoTime() < warmEnd) {
            drive(System.nanoTime() + 100_000_000L);
        }
        System.out.println("ready");
        System.out.flush();
        long end = Double.isInfinite(seconds) ? Long.MAX_VALUE : System.nanoTime() + (long) (seconds * 1e9);
        long rounds = 0;
        while (System.nanoTime() < end) {
            rounds += drive(Math.min(end, System.nanoTime() + 1_000_000_000L));
            System.out.println("rounds ".concat(Long.toString(rounds)));
            System.out.flush();
        }
    }
}
