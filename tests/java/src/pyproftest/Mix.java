package pyproftest;

/**
 * Twelve hot methods with known, distinct weights, for comparing profilers (pyprof vs JFR).
 *
 * GROUND TRUTH: one busy thread "mix-main" loops over work01 .. work12; workNN runs NN * UNIT iterations
 * of the same arithmetic loop, so workNN does NN/78 of the thread's CPU work (work12 ~15.4 %, work01
 * ~1.3 %) - counted in instructions, not wall time, so the split holds on a loaded machine too. Each
 * method has its own copy of the loop (C2 may inline them into round(): an inlined frame is still that
 * method's frame). The top-10 self methods of any correct profiler are work12 .. work03 (adjacent ones
 * may swap within sampling noise).
 *
 * stdout: "ready" after a warm-up of a few seconds.
 */
public final class Mix {
    static final long UNIT = 2_000;
    static volatile long sink;

    // Each method is a distinct copy (not a shared helper) so that its self time is its own.
    static long work01(long s) { long n = 1 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 31 + i; } } return h; }
    static long work02(long s) { long n = 2 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 37 + i; } } return h; }
    static long work03(long s) { long n = 3 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 41 + i; } } return h; }
    static long work04(long s) { long n = 4 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 43 + i; } } return h; }
    static long work05(long s) { long n = 5 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 47 + i; } } return h; }
    static long work06(long s) { long n = 6 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 53 + i; } } return h; }
    static long work07(long s) { long n = 7 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 59 + i; } } return h; }
    static long work08(long s) { long n = 8 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 61 + i; } } return h; }
    static long work09(long s) { long n = 9 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 67 + i; } } return h; }
    static long work10(long s) { long n = 10 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 71 + i; } } return h; }
    static long work11(long s) { long n = 11 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 73 + i; } } return h; }
    static long work12(long s) { long n = 12 * UNIT; long h = s; for (long k = 0; k < n; k++) { for (int i = 0; i < 64; i++) { h = h * 79 + i; } } return h; }

    static void round() {
        long h = sink;
        h = work01(h); h = work02(h); h = work03(h); h = work04(h); h = work05(h); h = work06(h);
        h = work07(h); h = work08(h); h = work09(h); h = work10(h); h = work11(h); h = work12(h);
        sink = h;
    }

    public static void main(String[] args) throws Exception {
        Thread worker = new Thread(() -> {
            while (true) {
                round();
            }
        }, "mix-main");
        worker.setDaemon(true);
        worker.start();
        Thread.sleep(4000);   // warm-up: C2 compiles every workNN
        System.out.println("ready");
        System.out.flush();
        double seconds = args.length > 0 ? Double.parseDouble(args[0]) : Double.POSITIVE_INFINITY;
        Thread.sleep(Double.isInfinite(seconds) ? Long.MAX_VALUE : (long) (seconds * 1000));
    }
}
