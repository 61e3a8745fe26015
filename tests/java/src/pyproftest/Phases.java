package pyproftest;

import java.util.concurrent.CountDownLatch;

/**
 * One thread cycling through three CPU phases whose shares of on-CPU time are known by construction.
 *
 * Usage: Phases [SHARES [CYCLE_MS [SECONDS]]], SHARES like "60,30,10" (the default; any non-negative
 * integers, normalised by their sum), CYCLE_MS the cycle length (default 100), SECONDS how long to run
 * after "ready" (default: until killed; then exit code 0).
 *
 * GROUND TRUTH (what a profile of this process must show once "ready" has been printed):
 *
 *   Thread: exactly one busy thread, Java name and /proc comm "phases-main". The main thread only
 *           sleeps (it wakes once a second to print "cycles N"); no other thread does work.
 *   Cycle:  phase A for shareA/sum of the cycle's wall time, then B, then C; busy-waiting against
 *           absolute deadlines on System.nanoTime (= CLOCK_MONOTONIC): no sleeping, no allocation, no
 *           locks, so the shares of the thread's on-CPU time equal the shares of wall time (60/30/10 by
 *           default) to within the clock-read overhead (< 1 %). Measured with `perf record -t TID` for 5 s
 *           (JDK 17, symbols from `jcmd PID Compiler.perfmap`): phaseA 59.6 %, phaseB 29.8 %,
 *           Java_pyproftest_Phases_nativePhase 9.9 %, __vdso_clock_gettime 0.45 %.
 *   A:      pyproftest.Phases.phaseA(J)J, pure Java integer mixing. Lines: every sample lies within
 *           [LINE:phaseA-begin, LINE:phaseA-end]; the work is on LINE:phaseA-hot .. LINE:phaseA-hot-end.
 *   B:      pyproftest.Phases.phaseB(J)J, pure Java table walk (a different loop shape), lines within
 *           [LINE:phaseB-begin, LINE:phaseB-end]; work on LINE:phaseB-hot .. LINE:phaseB-hot-end.
 *   C:      pyproftest.Phases.nativePhase(J)J, a JNI method: the samples' leaf is the native function
 *           Java_pyproftest_Phases_nativePhase in libphases.so (tests/java/native/phases.c, -O2, no
 *           frame pointers), with a little time in clock_gettime (vDSO); the Java frame above it is
 *           nativePhase (native method), called from runCycle at LINE:call-native.
 *   Callers: phaseA / phaseB / nativePhase <- pyproftest.Phases.runCycle (LINE:call-phaseA,
 *           LINE:call-phaseB, LINE:call-native) <- pyproftest.Phases.loop <- pyproftest.Phases.run
 *           <- java.lang.Thread.run (JDK 21+: also Thread.runWith in between).
 *   JIT:    phaseA and phaseB are deliberately larger than C2's FreqInlineSize (325 bytecodes; C1's limit
 *           is 35), so neither compiler ever inlines them: after the warm-up (3 s of 250 us cycles, before
 *           "ready") each is its own C2 (tier 4) nmethod and appears as a physical compiled frame.
 *           runCycle is C2-compiled too (tier 4, calls phaseA/phaseB as real calls); loop and run stay
 *           interpreted. After "ready" no method of this class is compiled or deoptimised again
 *           (checked with -XX:+PrintCompilation on JDK 17, 21 and 25).
 *
 * Line markers ("// LINE:<name>" ending a line) are resolved by marker_line() in
 * tests/integration/test_workloads.py so that tests never hard-code line numbers.
 *
 * stdout: "ready" once warmed up, then "cycles N" (cycles completed since ready) about once a second.
 */
public final class Phases implements Runnable {
    static {
        System.loadLibrary("phases");
    }

    /** Results land here so that no compiler may drop the work. */
    static volatile long sink;
    /** Measured cycles completed (written by phases-main, read by the printing main thread). */
    static volatile long cycles;

    private static final int[] TABLE = new int[4096];

    static {
        int x = 0x2545F491;
        for (int i = 0; i < TABLE.length; i++) {
            x ^= x << 13;
            x ^= x >>> 17;
            x ^= x << 5;
            TABLE[i] = x;
        }
    }

    private final long[] shares;
    private final long cycleNanos;
    private final long runNanos;
    private final CountDownLatch warm = new CountDownLatch(1);

    Phases(long[] shares, long cycleNanos, long runNanos) {
        this.shares = shares;
        this.cycleNanos = cycleNanos;
        this.runNanos = runNanos;
    }

    /** Phase C: busy in C until CLOCK_MONOTONIC reaches deadlineNanos (tests/java/native/phases.c). */
    static native long nativePhase(long deadlineNanos);

    /** Phase A: integer mixing (splitmix / xorshift lanes) until System.nanoTime() reaches deadline. */
    static long phaseA(long deadline) {                                               // LINE:phaseA-begin
        long a = deadline;
        long b = 0x9E3779B97F4A7C15L;
        long c = 0xBF58476D1CE4E5B9L;
        long d = 0x94D049BB133111EBL;
        long e = 0x2545F4914F6CDD1DL;
        while (System.nanoTime() < deadline) {                                       // LINE:phaseA-clock
            for (int i = 0; i < 256; i++) {                                          // LINE:phaseA-loop
                a += i; a ^= a >>> 30; a *= 0xBF58476D1CE4E5B9L; a ^= a >>> 27;        // LINE:phaseA-hot
                a *= 0x94D049BB133111EBL; a ^= a >>> 31;
                b += a; b ^= b << 13; b ^= b >>> 7; b ^= b << 17;
                c = ((c + b) << 23 | (c + b) >>> 41) ^ a; c *= 0xD1342543DE82EF95L;
                d = d * 6364136223846793005L + c; d ^= d >>> 29; d += b ^ (d << 11);
                e ^= a + d; e = (e << 7 | e >>> 57) * 0x2545F4914F6CDD1DL; e += c >>> 3;
                a ^= e >>> 19; b += d * 0x9E3779B97F4A7C15L; c ^= b >>> 37; d ^= e << 5;
                a += b ^ c; b ^= c + d; c += d ^ e; d ^= e + a; e += a ^ b;
                a = (a << 13 | a >>> 51) + (b ^ 0x632BE59BD9B4E019L); b *= 0xA0761D6478BD642FL;
                c = (c ^ (c >>> 33)) * 0xFF51AFD7ED558CCDL; d = (d ^ (d >>> 33)) * 0xC4CEB9FE1A85EC53L;
                e = (e ^ (e >>> 32)) * 0xE7037ED1A0B428DBL; a ^= c >>> 17; b ^= d >>> 23;   // LINE:phaseA-hot-end
            }
        }
        return a ^ b ^ c ^ d ^ e;
    }                                                                                // LINE:phaseA-end

    /** Phase B: dependent loads through a table, until System.nanoTime() reaches deadline. */
    static long phaseB(long deadline) {                                               // LINE:phaseB-begin
        final int[] t = TABLE;
        int p = (int) deadline & 4095;
        int q = 17;
        int r = 0x5bd1e995;
        long acc = 0;
        while (System.nanoTime() < deadline) {                                       // LINE:phaseB-clock
            for (int i = 0; i < 512; i++) {                                          // LINE:phaseB-loop
                int v = t[p]; p = (v ^ i) & 4095; q += v; r ^= q * 0x5bd1e995;         // LINE:phaseB-hot
                int w = t[(p + q) & 4095]; q = (q << 5 | q >>> 27) ^ w; r += w >>> 3;
                int x = t[(r ^ w) & 4095]; p = (p + x) & 4095; r = r * 31 + (x >>> 11);
                int y = t[(q + r) & 4095]; q ^= y; r ^= y << 9; p = (p ^ (y >>> 20)) & 4095;
                int z = t[(x ^ y) & 4095]; acc += z; q += z * 0x27d4eb2d; r ^= r >>> 15;
                int u = t[(z + p) & 4095]; acc ^= (long) u << 17; p = (p + (u & 63)) & 4095;
                int k = t[(u ^ r) & 4095]; r += k; q ^= k >>> 7; acc += q ^ r;
                int m = t[(k + q) & 4095]; p = (p ^ m) & 4095; r = (r << 13 | r >>> 19) + m;
                int n = t[(int) ((m ^ acc) & 4095)]; acc += n * 0x165667b1L; q -= n;  // LINE:phaseB-hot-end
            }
        }
        return acc + p + q + r;
    }                                                                                // LINE:phaseB-end

    /** One cycle starting at `start`: A, B, C against absolute deadlines. */
    static long runCycle(long start, long aNanos, long bNanos, long cNanos) {
        long deadline = start;
        long s = 0;
        if (aNanos > 0) {
            deadline += aNanos;
            s += phaseA(deadline);                                                    // LINE:call-phaseA
        }
        if (bNanos > 0) {
            deadline += bNanos;
            s += phaseB(deadline);                                                    // LINE:call-phaseB
        }
        if (cNanos > 0) {
            deadline += cNanos;
            s += nativePhase(deadline);                                               // LINE:call-native
        }
        return s;
    }

    /**
     * Cycles of cycleNanos until `until` (System.nanoTime); returns the cycles done. Deadlines chain from
     * the previous cycle's end, so short preemptions do not shift the shares; a thread more than a whole
     * cycle behind resynchronises instead of racing to catch up.
     */
    static long loop(long[] shares, long cycleNanos, long until, boolean counted) {
        long total = 0;
        for (long s : shares) {
            total += s;
        }
        long a = cycleNanos * shares[0] / total;
        long b = cycleNanos * shares[1] / total;
        long c = cycleNanos - a - b;
        if (shares[2] == 0) {
            c = 0;
        }
        long start = System.nanoTime();
        long n = 0;
        long acc = 0;
        while (true) {
            acc += runCycle(start, a, b, c);
            n++;
            if (counted) {
                cycles = n;
            }
            long end = start + cycleNanos;
            long now = System.nanoTime();
            start = now - end > cycleNanos ? now : end;
            if (now >= until) {
                break;
            }
        }
        sink += acc;
        return n;
    }

    /**
     * Let C2 compile phaseA, phaseB and runCycle (tier 4 needs ~5000 calls of the loop-less runCycle):
     * 250 us cycles with the same shares, in several loop() calls so that leaving loop() is not an
     * untaken branch. loop() itself stays interpreted (too few calls and back-edges, before and after).
     */
    static void warmUp(long[] shares, long nanos) {
        long end = System.nanoTime() + nanos;
        while (System.nanoTime() < end) {
            loop(shares, 250_000L, System.nanoTime() + 50_000_000L, false);
        }
    }

    @Override
    public void run() {
        warmUp(shares, 3_000_000_000L);
        warm.countDown();
        long until = runNanos < 0 ? Long.MAX_VALUE : System.nanoTime() + runNanos;
        loop(shares, cycleNanos, until, true);
    }

    static long[] parseShares(String spec) {
        String[] parts = spec.split(",");
        if (parts.length != 3) {
            throw new IllegalArgumentException("shares must be A,B,C: " + spec);
        }
        long[] shares = new long[3];
        long total = 0;
        for (int i = 0; i < 3; i++) {
            shares[i] = Long.parseLong(parts[i].trim());
            if (shares[i] < 0) {
                throw new IllegalArgumentException("negative share: " + spec);
            }
            total += shares[i];
        }
        if (total == 0) {
            throw new IllegalArgumentException("shares sum to 0: " + spec);
        }
        return shares;
    }

    public static void main(String[] args) throws Exception {
        long[] shares = parseShares(args.length > 0 ? args[0] : "60,30,10");
        long cycleNanos = (args.length > 1 ? Long.parseLong(args[1]) : 100) * 1_000_000L;
        long runNanos = args.length > 2 ? (long) (Double.parseDouble(args[2]) * 1e9) : -1;
        Phases phases = new Phases(shares, cycleNanos, runNanos);
        Thread worker = new Thread(null, phases, "phases-main");
        worker.start();
        phases.warm.await();
        System.out.println("ready");
        System.out.flush();
        while (worker.isAlive()) {
            worker.join(1000);
            System.out.println("cycles ".concat(Long.toString(cycles)));   // no indy: no compiles after ready
            System.out.flush();
        }
    }
}
