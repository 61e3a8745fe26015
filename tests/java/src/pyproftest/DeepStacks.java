package pyproftest;

/**
 * Java stacks deeper than pyprof's stack copy (32 KiB by default): frameworks reach 300+ frames.
 *
 * Usage: DeepStacks [DEPTH [THREADS [SECONDS]]]   (defaults 600, 2, until killed)
 *
 * GROUND TRUTH: THREADS threads "deep-N" each recurse DEPTH frames through three methods, Deep.a ->
 * Deep.b -> Deep.c -> Deep.a ... (each frame holds a few live longs, so frames stay large when
 * compiled), then burn CPU at the bottom in Deep.work for ~200 ms, return all the way up and start
 * again. So nearly every sample of a deep-N thread is DEPTH+ frames deep: pyproftest.DeepStacks.run at
 * the root, the recursion (only a -> b, b -> c, c -> a, and run -> a), Deep.work at the leaf.
 * The main thread sleeps. stdout: "ready" once the threads run.
 */
public final class DeepStacks extends Thread {
    static volatile long sink;
    final int depth;

    DeepStacks(String name, int depth) {
        super(name);
        this.depth = depth;
        setDaemon(true);
    }

    public static void main(String[] args) throws Exception {
        int depth = args.length > 0 ? Integer.parseInt(args[0]) : 600;
        int threads = args.length > 1 ? Integer.parseInt(args[1]) : 2;
        double seconds = args.length > 2 ? Double.parseDouble(args[2]) : -1;
        for (int i = 0; i < threads; i++) {
            new DeepStacks("deep-" + i, depth).start();
        }
        System.out.println("ready");
        System.out.flush();
        long end = seconds > 0 ? System.nanoTime() + (long) (seconds * 1e9) : Long.MAX_VALUE;
        while (System.nanoTime() < end) {
            Thread.sleep(200);
        }
        System.exit(0);
    }

    @Override
    public void run() {
        while (true) {
            sink += Deep.a(depth, 1, 2);
        }
    }

    static final class Deep {
        static long a(int n, long x, long y) {
            long p = x * 31 + y, q = y * 17 + n, r = p ^ q;
            return n <= 0 ? work(p) : b(n - 1, p, q) + r;
        }

        static long b(int n, long x, long y) {
            long p = x * 13 + y, q = y * 7 + n, r = p ^ q;
            return n <= 0 ? work(p) : c(n - 1, p, q) + r;
        }

        static long c(int n, long x, long y) {
            long p = x * 11 + y, q = y * 5 + n, r = p ^ q;
            return n <= 0 ? work(p) : a(n - 1, p, q) + r;
        }

        static long work(long seed) {
            long h = seed;
            long end = System.nanoTime() + 200_000_000L;
            while (System.nanoTime() < end) {
                for (int i = 0; i < 10_000; i++) {
                    h = h * 6364136223846793005L + 1442695040888963407L;
                    h ^= h >>> 29;
                }
            }
            return h;
        }
    }
}
