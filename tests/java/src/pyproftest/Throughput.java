package pyproftest;

/**
 * Steady CPU work on one thread, reporting its own throughput: the benchmark target for
 * "profiled vs unprofiled" (bench/overhead.py).
 *
 * stdout: "ready", then one line "ops <n> <nanos>" per interval (default 250 ms): n work units done in
 * that many nanoseconds. Runs until killed or for args[0] seconds.
 */
public final class Throughput {
    private static long sink;

    private static long unit(long seed) {
        long h = seed;
        for (int i = 0; i < 2_000; i++) {
            h = h * 0x9E3779B97F4A7C15L + (h >>> 29) + i;
        }
        return h;
    }

    public static void main(String[] args) throws Exception {
        double seconds = args.length > 0 ? Double.parseDouble(args[0]) : Double.POSITIVE_INFINITY;
        long intervalNanos = (args.length > 1 ? Long.parseLong(args[1]) : 250) * 1_000_000L;
        for (int i = 0; i < 20_000; i++) {
            sink += unit(i);   // warm up: let C2 compile unit() before "ready"
        }
        System.out.println("ready");
        System.out.flush();
        long end = Double.isInfinite(seconds) ? Long.MAX_VALUE : System.nanoTime() + (long) (seconds * 1e9);
        long windowStart = System.nanoTime();
        long ops = 0;
        while (true) {
            sink += unit(sink + ops);
            ops++;
            long now = System.nanoTime();
            if (now - windowStart >= intervalNanos) {
                System.out.println("ops " + ops + " " + (now - windowStart));
                System.out.flush();
                ops = 0;
                windowStart = now;
                if (now >= end) {
                    break;
                }
            }
        }
        System.err.println("sink " + sink);
    }
}
